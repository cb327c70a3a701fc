//! How Redis failures become `BrokerError`s, and `REDIS_URL` becomes fred's
//! configuration: every fred error leaves the broker through here, classified by
//! `sluice_common::redis_client::classify` and scrubbed of the URL's secrets.

use fred::{error::Error as RedisError, types::config::Config as RedisConfig};
use sluice_common::{
    redis_client::{self, RedisFailure, RedisSettings},
    redis_url::RedisUrl,
};

use super::BrokerError;

/// fred's configuration for `url`, through the one `REDIS_URL` parser.
pub(super) fn parse_url(url: &str, settings: &RedisSettings) -> Result<RedisConfig, BrokerError> {
    let parsed =
        RedisUrl::parse(url).map_err(|e| BrokerError::Config(format!("REDIS_URL: {e}")))?;
    redis_client::fred_config(&parsed, settings.tls_ca.as_deref())
        .map_err(|e| BrokerError::Config(e.to_string()))
}

/// Every fred error leaves this module through here: classified by its kind (and a
/// Redis error reply by its code), its text scrubbed of the URL's secrets.
pub(super) fn broker_error(e: RedisError) -> BrokerError {
    from_failure(redis_client::classify(&e))
}

pub(super) fn from_failure(f: RedisFailure) -> BrokerError {
    match f {
        RedisFailure::Refused(m) => BrokerError::Invalid(m),
        RedisFailure::NotLoaded => {
            BrokerError::NotLoaded("Redis answered \"Function not found\"".into())
        }
        RedisFailure::Timeout(m) => BrokerError::Timeout(m),
        RedisFailure::Config(m) => BrokerError::Config(m),
        RedisFailure::Unavailable(m) | RedisFailure::Rejected(m) => BrokerError::Unavailable(m),
    }
}

/// Kept under its old name for the registry and read paths.
pub(super) fn unavailable(e: RedisError) -> BrokerError {
    broker_error(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_url_form_is_configured_and_bad_ones_refused_without_the_password() {
        let s = RedisSettings::default();
        assert!(parse_url("redis://127.0.0.1:6379/0", &s).is_ok());
        let c = parse_url("redis-cluster://h:7000?node=h:7001", &s).unwrap();
        assert!(c.server.is_clustered());
        let c = parse_url("redis-sentinel://h:26379?sentinelServiceName=m", &s).unwrap();
        assert!(c.server.is_sentinel());
        assert!(parse_url("rediss://127.0.0.1:6380", &s).is_ok_and(|c| c.tls.is_some()));
        let err = parse_url("http://u:hunter2-pw@h:1", &s).unwrap_err();
        assert!(matches!(err, BrokerError::Config(_)), "{err:?}");
        assert!(!err.to_string().contains("hunter2-pw"), "{err}");
    }

    #[test]
    fn redis_failures_map_to_broker_errors_by_kind() {
        use fred::error::ErrorKind;
        let e = |k, t: &str| broker_error(RedisError::new(k, t.to_owned()));
        assert_eq!(
            e(ErrorKind::Unknown, "ERR sluice: payload is not valid JSON"),
            BrokerError::Invalid("payload is not valid JSON".into())
        );
        assert!(matches!(
            e(ErrorKind::Unknown, "ERR Function not found"),
            BrokerError::NotLoaded(_)
        ));
        assert!(matches!(
            e(ErrorKind::Timeout, "timed out"),
            BrokerError::Timeout(_)
        ));
        assert!(matches!(
            e(ErrorKind::Auth, "WRONGPASS"),
            BrokerError::Config(_)
        ));
        assert!(matches!(
            e(ErrorKind::IO, "connection reset"),
            BrokerError::Unavailable(_)
        ));
    }
}
