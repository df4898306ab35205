//! Which registry failures are worth another try, and the bounded exponential backoff
//! between tries.
//!
//! Transient: 5xx and 429 answers, connection failures, timeouts, bodies cut short.
//! Final: 401/403/404 and everything the registry said deliberately, and content that
//! does not match its digest (a retry would fetch the same wrong bytes; containerd and
//! Docker do not retry it either).

use std::time::Duration;

use oci_client::errors::{OciDistributionError, OciErrorCode};

/// How a registry operation failed, as far as the caller's decision goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Try again after a backoff.
    Transient,
    /// Transient, and specifically no answer in time (reported as a timeout if it lasts).
    Timeout,
    /// 401: no or wrong credentials.
    Unauthorized,
    /// 403: the credentials do not grant access.
    Denied,
    /// 404: no such repository, tag or blob.
    NotFound,
    /// Anything else: report as is.
    Fatal,
}

impl Class {
    pub(crate) fn is_transient(self) -> bool {
        matches!(self, Self::Transient | Self::Timeout)
    }
}

/// Classifies an error from `oci-client`, looking through the `io::Error` wrappers its
/// streams put around `reqwest` and digest errors.
pub(crate) fn classify(err: &OciDistributionError) -> Class {
    match err {
        OciDistributionError::UnauthorizedError { .. } => Class::Unauthorized,
        OciDistributionError::AuthenticationFailure(_) => Class::Unauthorized,
        OciDistributionError::ServerError { code, .. } => classify_status(*code),
        OciDistributionError::RegistryError { envelope, .. } => {
            // The first error code decides; registries send one in practice.
            match envelope.errors.first().map(|e| &e.code) {
                Some(OciErrorCode::Unauthorized) => Class::Unauthorized,
                Some(OciErrorCode::Denied) => Class::Denied,
                Some(
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NotFound,
                ) => Class::NotFound,
                Some(OciErrorCode::Toomanyrequests) => Class::Transient,
                _ => Class::Fatal,
            }
        }
        OciDistributionError::ImageManifestNotFoundError(_) => Class::NotFound,
        OciDistributionError::RequestError(e) => classify_reqwest(e),
        OciDistributionError::IoError(e) => classify_io(e),
        _ => Class::Fatal,
    }
}

fn classify_status(code: u16) -> Class {
    match code {
        401 => Class::Unauthorized,
        403 => Class::Denied,
        404 => Class::NotFound,
        408 | 429 | 500..=599 => Class::Transient,
        _ => Class::Fatal,
    }
}

fn classify_reqwest(e: &reqwest::Error) -> Class {
    if e.is_timeout() {
        Class::Timeout
    } else if let Some(status) = e.status() {
        classify_status(status.as_u16())
    } else if e.is_connect() || e.is_request() || e.is_body() || e.is_decode() {
        Class::Transient
    } else {
        Class::Fatal
    }
}

/// Body streams report failures as `io::Error`; the cause inside decides.
pub(crate) fn classify_io(e: &std::io::Error) -> Class {
    if let Some(inner) = e.get_ref() {
        if let Some(r) = inner.downcast_ref::<reqwest::Error>() {
            return classify_reqwest(r);
        }
        if inner.is::<oci_client::errors::DigestError>() {
            return Class::Fatal;
        }
    }
    match e.kind() {
        std::io::ErrorKind::TimedOut => Class::Timeout,
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::ConnectionAborted
        | std::io::ErrorKind::ConnectionRefused
        | std::io::ErrorKind::BrokenPipe => Class::Transient,
        _ => Class::Fatal,
    }
}

/// Bounded exponential backoff: `attempts` tries in all, waiting `base`, `2·base`, …
/// (at most `max`) between them, with up to 25 % jitter so that several pulls hitting
/// one recovering registry do not retry in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    /// Four tries over about three seconds: rides out a registry restart or a dropped
    /// connection without making a real outage slow to report.
    fn default() -> Self {
        Self {
            attempts: 4,
            base: Duration::from_millis(400),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The wait after failed try number `attempt` (1-based), before jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// [`Backoff::delay`] plus jitter taken from the clock (no RNG dependency needed:
    /// the goal is only to spread retries).
    pub(crate) fn delay_with_jitter(&self, attempt: u32) -> Duration {
        let d = self.delay(attempt);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.subsec_nanos())
            .unwrap_or(0);
        let quarter = d / 4;
        let jitter = quarter.mul_f64(f64::from(nanos % 1000) / 1000.0);
        d + jitter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_client::errors::{OciEnvelope, OciError};

    fn envelope(code: OciErrorCode) -> OciDistributionError {
        OciDistributionError::RegistryError {
            envelope: OciEnvelope {
                errors: vec![OciError {
                    code,
                    message: String::new(),
                    detail: serde_json::Value::Null,
                }],
            },
            url: "http://r/v2/x".into(),
        }
    }

    fn server(code: u16) -> OciDistributionError {
        OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: String::new(),
        }
    }

    #[test]
    fn server_errors_are_retried_and_client_errors_are_not() {
        assert_eq!(classify(&server(500)), Class::Transient);
        assert_eq!(classify(&server(503)), Class::Transient);
        assert_eq!(classify(&server(429)), Class::Transient);
        assert_eq!(classify(&server(404)), Class::NotFound);
        assert_eq!(classify(&server(403)), Class::Denied);
        assert_eq!(classify(&server(400)), Class::Fatal);
        assert_eq!(
            classify(&OciDistributionError::UnauthorizedError { url: "u".into() }),
            Class::Unauthorized
        );
        assert_eq!(
            classify(&envelope(OciErrorCode::ManifestUnknown)),
            Class::NotFound
        );
        assert_eq!(
            classify(&envelope(OciErrorCode::NameUnknown)),
            Class::NotFound
        );
        assert_eq!(classify(&envelope(OciErrorCode::Denied)), Class::Denied);
        assert_eq!(
            classify(&envelope(OciErrorCode::Toomanyrequests)),
            Class::Transient
        );
    }

    #[test]
    fn cut_connections_are_retried_and_digest_mismatches_are_not() {
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "cut");
        assert_eq!(classify_io(&eof), Class::Transient);
        let digest = std::io::Error::other(oci_client::errors::DigestError::VerificationError {
            expected: "a".into(),
            actual: "b".into(),
        });
        assert_eq!(classify_io(&digest), Class::Fatal);
        let timeout = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow");
        assert_eq!(classify_io(&timeout), Class::Timeout);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = Backoff {
            attempts: 6,
            base: Duration::from_millis(100),
            max: Duration::from_millis(500),
        };
        let delays: Vec<_> = (1..=5).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
        let j = b.delay_with_jitter(2);
        assert!(j >= Duration::from_millis(200) && j <= Duration::from_millis(250));
    }
}
