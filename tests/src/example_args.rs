//! The command line of the `examples/` programs: `--name value` pairs, each with a
//! default where it is read.

use std::collections::HashMap;

/// `--name value` pairs from the process's arguments (a name without a value is
/// dropped; a later pair wins).
#[derive(Debug, Clone, Default)]
pub struct ExampleArgs(HashMap<String, String>);

impl ExampleArgs {
    pub fn from_env() -> Self {
        let raw: Vec<String> = std::env::args().skip(1).collect();
        Self::parse(&raw)
    }

    pub fn parse(raw: &[String]) -> Self {
        ExampleArgs(
            raw.chunks(2)
                .filter_map(|c| {
                    Some((
                        c.first()?.trim_start_matches("--").to_owned(),
                        c.get(1)?.clone(),
                    ))
                })
                .collect(),
        )
    }

    /// The value of `--name`, else `default`.
    pub fn get(&self, name: &str, default: &str) -> String {
        self.0
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_read_and_defaults_fill_the_rest() {
        let raw: Vec<String> = ["--rounds", "3", "--a", "x", "--a", "y", "--dangling"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let args = ExampleArgs::parse(&raw);
        assert_eq!(args.get("rounds", "10"), "3");
        assert_eq!(args.get("a", "-"), "y");
        assert_eq!(args.get("dangling", "none"), "none");
        assert_eq!(args.get("per-round", "500"), "500");
    }
}
