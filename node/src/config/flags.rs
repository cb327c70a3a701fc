//! Command-line flags: `--queue-size 10` / `--queue-size=10` stand for
//! `SLUICE_QUEUE_SIZE=10`; the flags are derived from the table's names.

use std::collections::HashMap;

use super::{
    settings::{flag_name, SETTINGS},
    ConfigError,
};

/// Turns the flags into a map from variable name to value.
pub fn parse_flags(
    args: impl IntoIterator<Item = String>,
) -> Result<HashMap<String, String>, ConfigError> {
    let names: HashMap<String, &str> = SETTINGS
        .iter()
        .map(|s| (flag_name(s.name), s.name))
        .collect();
    let mut out = HashMap::new();
    let mut errors = Vec::new();
    let mut it = args.into_iter().peekable();
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            errors.push(format!(
                "unexpected argument {arg:?} (settings are --name value)"
            ));
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (flag.to_owned(), None),
        };
        let Some(key) = names.get(&name) else {
            errors.push(format!("unknown flag --{name} (see --help)"));
            if inline.is_none() {
                // Skip its value too, so one mistake is reported once.
                it.next_if(|v| !v.starts_with("--"));
            }
            continue;
        };
        match inline.or_else(|| it.next()) {
            Some(v) => {
                out.insert((*key).to_owned(), v);
            }
            None => errors.push(format!("--{name} needs a value")),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigError(errors))
    }
}
