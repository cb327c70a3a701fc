//! Reading the text of Redis's `INFO`: calls and time per command from `INFO
//! commandstats`, CPU seconds from `INFO cpu`. Plain text in, numbers out, so the
//! load generator and the integration tests share one parser without sharing a
//! Redis client.

/// Calls per command from `INFO commandstats` (`cmdstat_fcall_ro:calls=12,usec=…`),
/// keyed by the lower-case name (`client|id` for a subcommand), collected into any
/// map. Lines that are not a command's stats, or have no readable `calls`, are
/// skipped.
pub fn command_calls<C: FromIterator<(String, u64)>>(info: &str) -> C {
    stat_lines(info)
        .filter_map(|(name, calls, _)| Some((name.to_owned(), calls?)))
        .collect()
}

/// Per command from `INFO commandstats`: (calls, microseconds inside it). A line
/// without both readable is skipped.
pub fn command_stats<C: FromIterator<(String, (u64, u64))>>(info: &str) -> C {
    stat_lines(info)
        .filter_map(|(name, calls, usec)| Some((name.to_owned(), (calls?, usec?))))
        .collect()
}

/// `used_cpu_sys + used_cpu_user` from `INFO cpu`, in seconds; `None` unless both
/// are there.
pub fn cpu_seconds(info: &str) -> Option<f64> {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some(field("used_cpu_sys:")? + field("used_cpu_user:")?)
}

/// Each `cmdstat_` line as (name, calls, usec).
fn stat_lines(info: &str) -> impl Iterator<Item = (&str, Option<u64>, Option<u64>)> {
    info.lines().filter_map(|l| {
        let (name, rest) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
        let (mut calls, mut usec) = (None, None);
        for kv in rest.split(',') {
            match kv.split_once('=') {
                Some(("calls", v)) => calls = v.parse().ok(),
                Some(("usec", v)) => usec = v.parse().ok(),
                _ => {}
            }
        }
        Some((name, calls, usec))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;

    const INFO: &str = "# Commandstats\r\n\
        cmdstat_fcall_ro:calls=12,usec=340,usec_per_call=28.33,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_hmget:calls=30,usec=60,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_client|id:calls=1,usec=1,usec_per_call=1.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_fcall:calls=20,usec=900,usec_per_call=45.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_xadd:calls=7\r\n\
        cmdstat_broken:calls=x,usec=1\r\n\
        not a stat\r\n";

    #[test]
    fn commandstats_lines_parse_to_calls_per_command() {
        let calls: BTreeMap<String, u64> = command_calls(INFO);
        let want: BTreeMap<String, u64> = [
            ("fcall_ro", 12),
            ("hmget", 30),
            ("client|id", 1),
            ("fcall", 20),
            ("xadd", 7),
        ]
        .into_iter()
        .map(|(k, n)| (k.to_owned(), n))
        .collect();
        assert_eq!(calls, want);
        let hashed: HashMap<String, u64> = command_calls(INFO);
        assert_eq!(hashed.len(), 5);
        assert_eq!(hashed["fcall_ro"], 12);
        let none: BTreeMap<String, u64> = command_calls("# Commandstats\r\ncmdstat_x:usec=1\r\n");
        assert!(none.is_empty());
    }

    #[test]
    fn commandstats_with_time_need_calls_and_usec() {
        let stats: BTreeMap<String, (u64, u64)> = command_stats(INFO);
        assert_eq!(stats.len(), 4, "{stats:?}");
        assert_eq!(stats["fcall"], (20, 900));
        assert_eq!(stats["client|id"], (1, 1));
        assert!(!stats.contains_key("xadd") && !stats.contains_key("broken"));
    }

    #[test]
    fn cpu_is_system_plus_user_seconds() {
        assert_eq!(
            cpu_seconds("# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.25\r\n"),
            Some(3.75)
        );
        assert_eq!(cpu_seconds("used_cpu_sys:1.5\r\n"), None);
        assert_eq!(cpu_seconds("used_cpu_sys:x\r\nused_cpu_user:1\r\n"), None);
    }
}
