//! `fanout`: N clients on one topic (or spread over `--topics`), a constant
//! publish rate; the figure is deliveries per second and the latency they had.

use crate::{
    report::Report,
    run::{measured_run, Pick, RunConfig},
};

pub async fn run(cfg: &RunConfig) -> anyhow::Result<Report> {
    let outcome = measured_run(cfg, "fanout", Pick::RoundRobin).await?;
    Ok(outcome.report)
}
