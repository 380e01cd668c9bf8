//! Sending requests the way an API with quotas wants them: at most `concurrency` in flight,
//! starts spaced evenly at `rate_limit` per second, everybody paused when the API says `429`
//! (or its rate-limit headers say the quota is spent), and transient failures (5xx, timeouts,
//! broken connections) retried with exponential backoff and jitter, up to `max_attempts`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use backon::BackoffBuilder;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// `429`s a request may meet before it gives up (they do not count as attempts: the API is
/// working, only asking to slow down).
const MAX_RATE_LIMITED: u32 = 50;
/// Longest pause a `Retry-After` or reset header is trusted for.
const MAX_PAUSE: Duration = Duration::from_secs(600);

/// How requests are paced and retried.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Requests per second (None: no limit).
    pub rate_limit: Option<f64>,
    pub concurrency: usize,
    pub timeout: Duration,
    /// Attempts per request on transient failures, the first included.
    pub max_attempts: u32,
    /// First backoff delay.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

/// A finished exchange: the status and the body (as text), or why there was none.
#[derive(Debug)]
pub enum Answer {
    Response {
        status: StatusCode,
        body: String,
    },
    /// Transient failures went on past `max_attempts` (or too many `429`s).
    GaveUp {
        attempts: u32,
        last: String,
        /// The API itself is out of reach, not failing on this request: the last failure was
        /// a connection refused or reset, a DNS or TLS failure, a timeout, a gateway's
        /// 502/503/504, or `429`s without end.
        down: bool,
    },
    /// The request could not be built or sent at all (a bad URL, say).
    Broken(String),
}

/// One prepared request.
pub struct Request {
    pub method: Method,
    pub url: String,
    pub body: Option<Vec<u8>>,
    pub idempotency_key: Option<String>,
}

/// Pacing state shared by every request of a destination.
pub struct Client {
    http: reqwest::Client,
    policy: Policy,
    headers: HeaderMap,
    idempotency_header: Option<HeaderName>,
    /// Removed from every response body as it arrives, before anything quotes or cuts it.
    secrets: Vec<String>,
    slots: Semaphore,
    /// The earliest start of the next request (pacing), and the end of a pause asked for by
    /// the API.
    pacing: Mutex<(Instant, Instant)>,
    pub retries: AtomicU64,
}

impl Client {
    pub fn new(
        policy: Policy,
        headers: HeaderMap,
        idempotency_header: Option<HeaderName>,
        secrets: Vec<String>,
    ) -> Result<Client, String> {
        let http = reqwest::Client::builder()
            .timeout(policy.timeout)
            .connect_timeout(policy.timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("backflow/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        let now = Instant::now();
        Ok(Client {
            http,
            slots: Semaphore::new(policy.concurrency.max(1)),
            policy,
            headers,
            idempotency_header,
            secrets,
            pacing: Mutex::new((now, now)),
            retries: AtomicU64::new(0),
        })
    }

    /// Requests in flight at most.
    pub fn concurrency(&self) -> usize {
        self.policy.concurrency.max(1)
    }

    /// Wait for a start slot: after the API's pause, and `1 / rate_limit` after the previous
    /// start. Slots are handed out in order, so starts are evenly spaced and no window of one
    /// second holds more than `rate_limit` of them.
    async fn wait_for_slot(&self) {
        loop {
            let (start, paused_until) = {
                let Ok(mut p) = self.pacing.lock() else {
                    return;
                };
                let now = Instant::now();
                let start = p.0.max(p.1).max(now);
                if let Some(rate) = self.policy.rate_limit {
                    p.0 = start + Duration::from_secs_f64(1.0 / rate);
                }
                (start, p.1)
            };
            // Only when there is something to wait for: a sleep, even until now, lasts until
            // the timer's next tick (a millisecond), which was most of a request's time
            // against a fast API.
            if start <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(start).await;
            // A pause asked for while this request waited moves it back.
            let paused_now = self.pacing.lock().map(|p| p.1).unwrap_or(paused_until);
            if paused_now <= Instant::now() || paused_now <= paused_until {
                return;
            }
        }
    }

    /// Pause every request until `until`.
    fn pause(&self, pause: Duration) {
        let until = Instant::now() + pause.min(MAX_PAUSE);
        if let Ok(mut p) = self.pacing.lock()
            && p.1 < until
        {
            p.1 = until;
        }
    }

    /// Send `req`, retrying what is worth retrying.
    pub async fn send(&self, req: &Request) -> Answer {
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(self.policy.min_backoff)
            .with_max_delay(self.policy.max_backoff)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build();
        let mut attempts = 0u32;
        let mut rate_limited = 0u32;
        loop {
            if crate::interrupt::requested() {
                return Answer::Broken(crate::interrupt::MESSAGE.into());
            }
            let outcome = {
                let Ok(_slot) = self.slots.acquire().await else {
                    return Answer::Broken("the request queue was closed".into());
                };
                self.wait_for_slot().await;
                self.exchange(req).await
            };
            let fallback = backoff.next().unwrap_or(self.policy.max_backoff);
            let (reason, wait, down) = match outcome {
                Ok((status, headers, body)) => {
                    self.observe_quota(&headers);
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        rate_limited += 1;
                        // At least the backoff, so that `Retry-After: 0` is no busy loop.
                        let wait = retry_after(&headers).map_or(fallback, |w| w.max(fallback));
                        self.pause(wait);
                        if rate_limited > MAX_RATE_LIMITED {
                            return Answer::GaveUp {
                                attempts: attempts + rate_limited,
                                last: format!("HTTP 429 {rate_limited} times in a row"),
                                down: true,
                            };
                        }
                        self.retries.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if !is_transient(status) {
                        return Answer::Response { status, body };
                    }
                    attempts += 1;
                    let wait = retry_after(&headers).map_or(fallback, |w| w.max(fallback));
                    let gateway = matches!(status.as_u16(), 502..=504);
                    (status_line(status, &body), wait, gateway)
                }
                Err(Failure::Transient(reason)) => {
                    attempts += 1;
                    let reason = if reason.starts_with("timed out") {
                        format!(
                            "{reason} (no answer within the destination's timeout of {:?}; raise `timeout` if the API is slow)",
                            self.policy.timeout
                        )
                    } else {
                        reason
                    };
                    (reason, fallback, true)
                }
                Err(Failure::Broken(reason)) => return Answer::Broken(reason),
            };
            if attempts >= self.policy.max_attempts {
                return Answer::GaveUp {
                    attempts,
                    last: reason,
                    down,
                };
            }
            tracing::debug!(url = %req.url, attempts, %reason, "retrying");
            self.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
    }

    async fn exchange(&self, req: &Request) -> Result<(StatusCode, HeaderMap, String), Failure> {
        let mut builder = self
            .http
            .request(req.method.clone(), &req.url)
            .headers(self.headers.clone());
        if let (Some(name), Some(key)) = (&self.idempotency_header, &req.idempotency_key)
            && let Ok(value) = HeaderValue::from_str(key)
        {
            builder = builder.header(name.clone(), value);
        }
        if let Some(body) = &req.body {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let response = builder.send().await.map_err(classify)?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await.map_err(classify)?;
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        Ok((status, headers, crate::databases::redact(&body, &secrets)))
    }

    /// Rate-limit headers: when the quota is spent (`*RateLimit-Remaining: 0`), pause until it
    /// resets (`*RateLimit-Reset`, seconds or a Unix time, or HubSpot's interval).
    fn observe_quota(&self, headers: &HeaderMap) {
        let find = |suffix: &str| {
            headers.iter().find_map(|(name, value)| {
                name.as_str()
                    .ends_with(suffix)
                    .then(|| value.to_str().ok()?.trim().parse::<f64>().ok())
                    .flatten()
                    .filter(|v| v.is_finite())
            })
        };
        if find("ratelimit-remaining") != Some(0.0) {
            return;
        }
        let wait = if let Some(reset) = find("ratelimit-reset") {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            // Above a billion it is a Unix time, not a number of seconds.
            let secs = if reset > 1e9 { reset - now } else { reset };
            Duration::from_secs_f64(secs.clamp(0.0, MAX_PAUSE.as_secs_f64()))
        } else if let Some(ms) = find("ratelimit-interval-milliseconds") {
            Duration::from_secs_f64((ms / 1000.0).clamp(0.0, MAX_PAUSE.as_secs_f64()))
        } else {
            Duration::from_secs(1)
        };
        self.pause(wait);
    }
}

enum Failure {
    Transient(String),
    Broken(String),
}

fn classify(e: reqwest::Error) -> Failure {
    // reqwest's messages name the URL but never the headers, so no secret is in them.
    let text = error_chain(&e);
    if e.is_builder() {
        Failure::Broken(text)
    } else if e.is_timeout() {
        Failure::Transient(format!("timed out: {text}"))
    } else {
        Failure::Transient(text)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// Statuses worth sending again as they are.
fn is_transient(status: StatusCode) -> bool {
    status.is_server_error()
        && status != StatusCode::NOT_IMPLEMENTED
        && status != StatusCode::HTTP_VERSION_NOT_SUPPORTED
        || status == StatusCode::REQUEST_TIMEOUT
        || status.as_u16() == 425
}

/// `Retry-After`, as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(MAX_PAUSE.as_secs_f64())));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(MAX_PAUSE),
    )
}

/// `HTTP 503 Service Unavailable: <start of the body>`.
pub fn status_line(status: StatusCode, body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {}", truncate(body, 300))
    }
}

/// At most `max` characters of `s`, with an ellipsis when cut.
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        let later = SystemTime::now() + Duration::from_secs(30);
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(27) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("99999"));
        assert_eq!(retry_after(&h), Some(MAX_PAUSE));
    }

    #[test]
    fn transient_statuses() {
        for s in [500, 502, 503, 504, 408, 425] {
            assert!(is_transient(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [400, 401, 404, 409, 422, 429, 501] {
            assert!(!is_transient(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }

    fn client() -> Client {
        paced(None)
    }

    fn paced(rate_limit: Option<f64>) -> Client {
        Client::new(
            Policy {
                rate_limit,
                concurrency: 1,
                timeout: Duration::from_secs(1),
                max_attempts: 1,
                min_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(1),
            },
            HeaderMap::new(),
            None,
            vec![],
        )
        .unwrap()
    }

    /// Without a rate limit or a pause, a request starts at once: its wait is over at the
    /// first poll, where a timer (even one due now) would wait for the next tick.
    #[tokio::test]
    async fn nothing_to_wait_for_waits_for_nothing() {
        use futures::FutureExt;
        let c = client();
        for _ in 0..100 {
            assert!(c.wait_for_slot().now_or_never().is_some());
        }
        // A rate limit spaces starts: the second waits.
        let c = paced(Some(1.0));
        assert!(c.wait_for_slot().now_or_never().is_some());
        assert!(c.wait_for_slot().now_or_never().is_none());
    }

    #[tokio::test]
    async fn a_spent_quota_pauses_until_it_resets() {
        let c = client();
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("3"));
        h.insert("x-ratelimit-reset", HeaderValue::from_static("5"));
        c.observe_quota(&h);
        assert!(c.pacing.lock().unwrap().1 <= Instant::now());
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        c.observe_quota(&h);
        let paused = c.pacing.lock().unwrap().1 - Instant::now();
        assert!(
            paused > Duration::from_secs(4) && paused <= Duration::from_secs(5),
            "{paused:?}"
        );
        // HubSpot: remaining 0 within its interval.
        let c = client();
        let mut h = HeaderMap::new();
        h.insert(
            "x-hubspot-ratelimit-remaining",
            HeaderValue::from_static("0"),
        );
        h.insert(
            "x-hubspot-ratelimit-interval-milliseconds",
            HeaderValue::from_static("10000"),
        );
        c.observe_quota(&h);
        let paused = c.pacing.lock().unwrap().1 - Instant::now();
        assert!(paused > Duration::from_secs(9), "{paused:?}");
    }

    #[tokio::test]
    async fn starts_are_spaced_by_the_rate() {
        let client = paced(Some(50.0));
        let t0 = Instant::now();
        for _ in 0..11 {
            client.wait_for_slot().await;
        }
        // Eleven starts at 50/s span at least ten intervals of 20 ms.
        assert!(
            t0.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t0.elapsed()
        );
        client.pause(Duration::from_millis(100));
        let t1 = Instant::now();
        client.wait_for_slot().await;
        assert!(t1.elapsed() >= Duration::from_millis(90));
    }
}
