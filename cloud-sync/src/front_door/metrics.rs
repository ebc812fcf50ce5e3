//! Request metrics in the Prometheus text exposition format (version 0.0.4), served at
//! `/metrics`: requests by route, method and status, latency histograms by route, and the
//! front door's refusals. Routes are the templates (`/api/v1/cases/{id}`), never the ids in
//! a path, so no identifier reaches the metrics and their number stays bounded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Latency bucket bounds, seconds.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    refused: BTreeMap<&'static str, u64>,
}

/// The hub's request metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// Counts one answered request.
    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *m.requests.entry((route.to_owned(), method.to_owned(), status)).or_default() += 1;
        let h = m.latency.entry(route.to_owned()).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// Counts a refusal by the front door (`rate_limited`, `unauthenticated`, `forbidden`,
    /// `csrf`).
    pub fn refused(&self, why: &'static str) {
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()).refused.entry(why).or_default() += 1;
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        out.push_str(
            "# HELP medvan_http_requests_total HTTP requests answered, by route template, method and status.\n",
        );
        out.push_str("# TYPE medvan_http_requests_total counter\n");
        for ((route, method, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "medvan_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                escape(route),
                escape(method)
            );
        }
        out.push_str("# HELP medvan_http_request_duration_seconds Time to answer, by route template.\n");
        out.push_str("# TYPE medvan_http_request_duration_seconds histogram\n");
        for (route, h) in &m.latency {
            let r = escape(route);
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "medvan_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"{bound}\"}} {}",
                    h.counts[i]
                );
            }
            let _ =
                writeln!(out, "medvan_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "medvan_http_request_duration_seconds_sum{{route=\"{r}\"}} {}", h.sum);
            let _ = writeln!(out, "medvan_http_request_duration_seconds_count{{route=\"{r}\"}} {}", h.count);
        }
        out.push_str(
            "# HELP medvan_front_door_refusals_total Requests the front door refused before any handler ran.\n",
        );
        out.push_str("# TYPE medvan_front_door_refusals_total counter\n");
        for (why, n) in &m.refused {
            let _ = writeln!(out, "medvan_front_door_refusals_total{{reason=\"{why}\"}} {n}");
        }
        out
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let m = Metrics::default();
        m.observe("GET", "/api/v1/cases/{id}", 200, 0.003);
        m.observe("GET", "/api/v1/cases/{id}", 404, 0.2);
        m.observe("GET", "/x\"y", 200, 20.0);
        m.refused("rate_limited");
        let text = m.render();
        assert!(
            text.contains("medvan_http_requests_total{route=\"/api/v1/cases/{id}\",method=\"GET\",status=\"404\"} 1")
        );
        assert!(text.contains("le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("route=\"/api/v1/cases/{id}\",le=\"0.25\"} 2"), "{text}");
        assert!(text.contains("route=\"/x\\\"y\",le=\"10\"} 0"), "{text}");
        assert!(text.contains("route=\"/x\\\"y\",le=\"+Inf\"} 1"), "{text}");
        assert!(text.contains("medvan_front_door_refusals_total{reason=\"rate_limited\"} 1"));
    }
}
