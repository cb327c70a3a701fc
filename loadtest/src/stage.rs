//! The node's own stage, read from its `/metrics`: `sluice_alert_stage_seconds` and
//! `sluice_delta_stage_seconds` (from the moment the node has a live message to its
//! frame written to the socket). A run scrapes before and after its window; the
//! difference of the cumulative buckets is the window's histogram, and quantiles
//! come from it by linear interpolation inside the bucket (so they are as fine as
//! the buckets: 50 µs – 1 s, 20 bounds).

/// Cumulative `(le, count)` pairs of a histogram in Prometheus text, `+Inf` last.
pub fn buckets(text: &str, name: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut out: Vec<(f64, u64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// `after − before`, bucket by bucket (the same bounds; a missing scrape is empty).
pub fn window(before: &[(f64, u64)], after: &[(f64, u64)]) -> Vec<(f64, u64)> {
    after
        .iter()
        .map(|&(le, n)| {
            let was = before.iter().find(|(b, _)| *b == le).map_or(0, |(_, c)| *c);
            (le, n.saturating_sub(was))
        })
        .collect()
}

/// The `q` quantile (0–1) of cumulative buckets, in the buckets' unit; `None`
/// without samples. Inside a bucket the samples are taken as evenly spread; in the
/// `+Inf` bucket the answer is the last finite bound.
pub fn quantile(cumulative: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = cumulative.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for &(le, n) in cumulative {
        if n as f64 >= rank && n > below {
            if le.is_infinite() {
                return Some(lower);
            }
            let within = (rank - below as f64) / (n - below) as f64;
            return Some(lower + (le - lower) * within.clamp(0.0, 1.0));
        }
        if le.is_finite() {
            lower = le;
        }
        below = n;
    }
    Some(lower)
}

/// Scrapes `{http}/metrics`; `None` if the node does not answer.
pub async fn scrape(http: &str) -> Option<String> {
    let r = reqwest::Client::new()
        .get(format!("{http}/metrics"))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    r.text().await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE sluice_alert_stage_seconds histogram\n\
        sluice_alert_stage_seconds_bucket{le=\"0.001\"} 10\n\
        sluice_alert_stage_seconds_bucket{le=\"0.002\"} 90\n\
        sluice_alert_stage_seconds_bucket{le=\"0.005\"} 100\n\
        sluice_alert_stage_seconds_bucket{le=\"+Inf\"} 100\n\
        sluice_alert_stage_seconds_sum 0.15\n\
        sluice_alert_stage_seconds_count 100\n\
        sluice_delta_stage_seconds_bucket{le=\"0.001\"} 3\n";

    #[test]
    fn buckets_of_one_histogram_only_in_order() {
        let b = buckets(TEXT, "sluice_alert_stage_seconds");
        assert_eq!(
            b,
            vec![(0.001, 10), (0.002, 90), (0.005, 100), (f64::INFINITY, 100)]
        );
        assert_eq!(
            buckets(TEXT, "sluice_delta_stage_seconds"),
            vec![(0.001, 3)]
        );
        assert!(buckets(TEXT, "nothing").is_empty());
    }

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let b = buckets(TEXT, "sluice_alert_stage_seconds");
        // The 10th sample is the top of the first bucket; the 50th is half-way
        // (40 of 80) through the second; the 99th is 9 of 10 into the third.
        assert!((quantile(&b, 0.10).unwrap() - 0.001).abs() < 1e-12);
        assert!((quantile(&b, 0.50).unwrap() - 0.0015).abs() < 1e-12);
        assert!((quantile(&b, 0.99).unwrap() - 0.0047).abs() < 1e-12);
        assert_eq!(quantile(&[(0.001, 0), (f64::INFINITY, 0)], 0.5), None);
        // Everything above the last bound: the last bound.
        assert_eq!(
            quantile(&[(0.001, 0), (f64::INFINITY, 5)], 0.5),
            Some(0.001)
        );
    }

    #[test]
    fn the_window_is_the_difference_of_two_scrapes() {
        let before = vec![(0.001, 4), (f64::INFINITY, 5)];
        let after = vec![(0.001, 10), (f64::INFINITY, 20)];
        assert_eq!(
            window(&before, &after),
            vec![(0.001, 6), (f64::INFINITY, 15)]
        );
        assert_eq!(window(&[], &after), after);
    }
}
