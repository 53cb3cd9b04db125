//! A small client of the Prometheus HTTP API (`/api/v1/query`) and the queries the
//! autoscaler needs. IO only: it returns numbers, [`super::decide`] decides.

use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum PromError {
    /// The HTTP request failed or timed out.
    #[error("failed to query prometheus at {url}")]
    Http {
        /// The query URL.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// Prometheus answered with an error status.
    #[error("prometheus rejected query `{query}`: {message}")]
    Api {
        /// The PromQL.
        query: String,
        /// Prometheus' error text.
        message: String,
    },
    /// The answer was not a vector of numbers.
    #[error("failed to read prometheus answer to `{query}`: {detail}")]
    Shape {
        /// The PromQL.
        query: String,
        /// What was wrong.
        detail: String,
    },
}

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorSample {
    /// The series labels.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
    /// Evaluation time (unix seconds).
    pub at: f64,
}

/// Prometheus HTTP API client.
#[derive(Debug, Clone)]
pub struct PromClient {
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    result: Vec<RawSample>,
}

#[derive(Deserialize)]
struct RawSample {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

impl PromClient {
    /// A client with the given per-request timeout. A rustls crypto provider must be
    /// installed first (`rustls::crypto::ring::default_provider().install_default()`).
    pub fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()?;
        Ok(Self { http })
    }

    /// Runs an instant query against `base` (e.g. `http://prometheus:9090`).
    pub async fn query(&self, base: &str, query: &str) -> Result<Vec<VectorSample>, PromError> {
        let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
        let http_err = |source| PromError::Http {
            url: url.clone(),
            source,
        };
        let response = self
            .http
            .get(&url)
            .query(&[("query", query)])
            .send()
            .await
            .map_err(http_err)?;
        // Prometheus returns JSON with an error text on 400/422/503 too.
        let envelope: Envelope = response.json().await.map_err(http_err)?;
        parse_envelope(query, envelope)
    }

    /// Reads the numbers the autoscaler needs for one ImCluster.
    pub async fn cluster_metrics(
        &self,
        base: &str,
        cluster: &str,
        namespace: &str,
    ) -> Result<ClusterMetrics, PromError> {
        let queries = Queries::new(cluster, namespace);
        let connections = self.query(base, &queries.connections).await?;
        let by_pod = self.query(base, &queries.connections_by_pod).await?;
        let gateway_seen = self.query(base, &queries.gateway_last_scrape).await?;
        let messages = self.query(base, &queries.messages_rate).await?;
        let logic_seen = self.query(base, &queries.logic_last_scrape).await?;
        Ok(ClusterMetrics {
            connections: first_value(&connections),
            connections_by_pod: by_pod
                .iter()
                .filter_map(|s| s.labels.get("pod").map(|pod| (pod.clone(), s.value)))
                .collect(),
            gateway_last_scrape: first_value(&gateway_seen),
            messages_per_second: first_value(&messages),
            logic_last_scrape: first_value(&logic_seen),
        })
    }
}

/// What Prometheus says about one ImCluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterMetrics {
    /// Sum of `im_gateway_connections`.
    pub connections: Option<f64>,
    /// `im_gateway_connections` per gateway pod.
    pub connections_by_pod: BTreeMap<String, f64>,
    /// Newest scrape time (unix seconds) of a gateway series.
    pub gateway_last_scrape: Option<f64>,
    /// Sum of `rate(im_logic_messages_total[1m])`.
    pub messages_per_second: Option<f64>,
    /// Newest scrape time (unix seconds) of a logic series.
    pub logic_last_scrape: Option<f64>,
}

/// The PromQL the operator runs, for one ImCluster. Series carry `imcluster` and
/// `namespace` labels (set by the scrape configuration; see docs/operations.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queries {
    /// Total connections.
    pub connections: String,
    /// Connections per pod.
    pub connections_by_pod: String,
    /// Freshness of gateway series.
    pub gateway_last_scrape: String,
    /// Total message rate.
    pub messages_rate: String,
    /// Freshness of logic series.
    pub logic_last_scrape: String,
}

impl Queries {
    /// Queries selecting one ImCluster's series.
    pub fn new(cluster: &str, namespace: &str) -> Self {
        let sel = format!(
            "imcluster=\"{}\",namespace=\"{}\"",
            escape(cluster),
            escape(namespace)
        );
        Self {
            connections: format!("sum(im_gateway_connections{{{sel}}})"),
            connections_by_pod: format!("sum by (pod) (im_gateway_connections{{{sel}}})"),
            gateway_last_scrape: format!("max(timestamp(im_gateway_connections{{{sel}}}))"),
            messages_rate: format!("sum(rate(im_logic_messages_total{{{sel}}}[1m]))"),
            logic_last_scrape: format!("max(timestamp(im_logic_messages_total{{{sel}}}))"),
        }
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

fn first_value(samples: &[VectorSample]) -> Option<f64> {
    samples.first().map(|s| s.value).filter(|v| v.is_finite())
}

fn parse_envelope(query: &str, envelope: Envelope) -> Result<Vec<VectorSample>, PromError> {
    if envelope.status != "success" {
        return Err(PromError::Api {
            query: query.into(),
            message: envelope.error.unwrap_or_else(|| envelope.status.clone()),
        });
    }
    let shape = |detail: String| PromError::Shape {
        query: query.into(),
        detail,
    };
    let data = envelope.data.ok_or_else(|| shape("no data".into()))?;
    if data.result_type != "vector" {
        return Err(shape(format!("result type {}", data.result_type)));
    }
    data.result
        .into_iter()
        .map(|raw| {
            let value = raw
                .value
                .1
                .parse::<f64>()
                .map_err(|e| shape(format!("value {:?}: {e}", raw.value.1)))?;
            Ok(VectorSample {
                labels: raw.metric,
                value,
                at: raw.value.0,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Vec<VectorSample>, PromError> {
        parse_envelope("q", serde_json::from_str(json).expect("json"))
    }

    #[test]
    fn parses_a_vector() {
        let samples = parse(
            r#"{"status":"success","data":{"resultType":"vector","result":[
                {"metric":{"pod":"gw-0"},"value":[1700000000.5,"42"]},
                {"metric":{},"value":[1700000000.5,"NaN"]}]}}"#,
        )
        .expect("ok");
        assert_eq!(samples[0].labels["pod"], "gw-0");
        assert_eq!(samples[0].value, 42.0);
        assert!(samples[1].value.is_nan());
        assert_eq!(first_value(&samples[1..]), None);
    }

    #[test]
    fn reports_api_errors_and_wrong_shapes() {
        let err = parse(r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#)
            .expect_err("error");
        assert!(err.to_string().contains("parse error"), "{err}");
        let err = parse(r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#)
            .expect_err("matrix");
        assert!(err.to_string().contains("matrix"), "{err}");
    }

    #[test]
    fn queries_select_the_cluster() {
        let q = Queries::new("chat", "im");
        assert_eq!(
            q.connections,
            r#"sum(im_gateway_connections{imcluster="chat",namespace="im"})"#
        );
        assert_eq!(
            q.messages_rate,
            r#"sum(rate(im_logic_messages_total{imcluster="chat",namespace="im"}[1m]))"#
        );
        assert!(Queries::new("a\"b", "x").connections.contains(r#"a\"b"#));
    }
}
