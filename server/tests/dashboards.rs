//! The monitoring files of `server/deploy/`: the Prometheus alert rules, checked
//! and unit-tested by Debian's `promtool` (every alert fires on synthetic series
//! and stays silent on healthy ones), and the Grafana dashboard, whose every
//! panel query (Grafana's variables substituted) a real Prometheus evaluates
//! after scraping a real server that served real traffic: valid and invalid keys,
//! a Composio outage, a miss storm, an invalidation through a real
//! `redis-server`, and signed webhook deliveries relayed to an app. No per-key
//! label anywhere. `.ci/run` installs `prometheus` (which brings `promtool`).
#![cfg(feature = "redis")]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::any;
use axum::Router;
use composio_auth::testing::{sign_delivery, Reply, StandIn};
use serde_json::Value;
use support::proxy::{free_port, installed, signal};
use support::redis::{RedisServer, PEPPER};
use support::{client, composio, Server, ADMIN, MEMBER};

/// The scrape job alerts.yml and the dashboard assume.
const JOB: &str = "composio-auth";

/// The label names any query, alert or series may carry: the metrics' own small
/// sets, the target's, and the summary's. Never a key, an id, a secret.
const ALLOWED_LABELS: [&str; 8] = [
    "job",
    "instance",
    "result",
    "outcome",
    "tier",
    "direction",
    "reason",
    "quantile",
];

/// The alerts of alerts.yml.
const ALERTS: [&str; 9] = [
    "ComposioAuthDown",
    "ComposioAuthAbsent",
    "ComposioAuthUnavailable",
    "ComposioAuthUpstreamUndecided",
    "ComposioAuthUpstreamSlow",
    "ComposioAuthRedisUnreachable",
    "ComposioAuthHitRatioLow",
    "ComposioAuthWebhookRejected",
    "ComposioAuthWebhookRelayFailing",
];

/// What Grafana puts for `$__rate_interval` here: four 1 s scrapes would do, a
/// minute holds the whole test's traffic.
const RATE_INTERVAL: &str = "1m";

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs promtool in deploy/prometheus/ (the files name each other relatively).
fn promtool(args: &[&str]) -> String {
    let output = Command::new(installed("promtool", "prometheus"))
        .args(args)
        .current_dir(deploy("prometheus"))
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn promtool_checks_the_rules_and_the_config_and_every_alert_is_unit_tested() {
    let checked = promtool(&["check", "rules", "--lint=all", "--lint-fatal", "alerts.yml"]);
    assert!(checked.contains("SUCCESS: 9 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // The example scrape configuration, with alerts.yml as its rule file.
    promtool(&[
        "check",
        "config",
        "--lint=all",
        "--lint-fatal",
        "prometheus.yml",
    ]);

    let rules = read("prometheus/alerts.yml");
    let named: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(named, ALERTS, "the alerts of alerts.yml");
    // The header says which scrape job the rules assume, and prometheus.yml is it.
    let header: String = rules.lines().take_while(|l| l.starts_with('#')).collect();
    assert!(header.contains(&format!("job=\"{JOB}\"")), "{header}");
    assert!(read("prometheus/prometheus.yml").contains(&format!("job_name: {JOB}")));

    // Each alert has a case where it fires and one where it stays silent (an
    // empty exp_alerts: pending, or a healthy fleet).
    let tests = read("prometheus/alerts.test.yml");
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let mut cases: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (n, line) in lines.iter().enumerate() {
        if let Some(alert) = line.strip_prefix("alertname: ") {
            let expected = lines[n + 1..]
                .iter()
                .find_map(|l| l.strip_prefix("exp_alerts:"))
                .expect("exp_alerts follows alertname");
            let (fires, silent) = cases.entry(alert).or_default();
            match expected.trim() {
                "[]" => *silent += 1,
                _ => *fires += 1,
            }
        }
    }
    for alert in ALERTS {
        let (fires, silent) = cases.get(alert).copied().unwrap_or_default();
        assert!(
            fires > 0 && silent > 0,
            "{alert}: {fires} firing and {silent} silent cases"
        );
    }
    assert_eq!(cases.len(), ALERTS.len(), "{cases:?}");
}

#[test]
fn the_dashboard_has_job_and_instance_variables_only_and_no_per_key_label() {
    let dashboard = dashboard();
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    // `datasource` chooses the Prometheus; `job` and `instance` the only labels.
    assert_eq!(variables, ["datasource", "job", "instance"]);
    for variable in &dashboard["templating"]["list"].as_array().unwrap()[1..] {
        let query = variable["query"]["query"].as_str().unwrap();
        for label in label_names(query) {
            assert!(["job", "instance"].contains(&label.as_str()), "{query}");
        }
    }
    let targets = targets(&dashboard);
    assert!(targets.len() >= 20, "{} targets", targets.len());
    let mut titles = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "duplicate id");
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap();
        assert!(titles.insert(title), "duplicate title {title}");
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        assert!(
            !panel["targets"].as_array().unwrap().is_empty(),
            "{title} has no query"
        );
        assert!(
            panel["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{title} explains itself"
        );
    }
    for target in &targets {
        // Every selector is the chosen job's and instances', and names no other
        // label than the metrics' own.
        for selector in selectors(&target.expr) {
            assert!(
                selector.contains(r#"job="$job""#) && selector.contains(r#"instance=~"$instance""#),
                "{}: {selector}",
                target.panel
            );
        }
        for label in label_names(&target.expr)
            .into_iter()
            .chain(legend_labels(&target.legend))
        {
            assert!(
                ALLOWED_LABELS.contains(&label.as_str()),
                "{}: label {label} in {}",
                target.panel,
                target.expr
            );
        }
    }
}

/// The secret the relay verifies deliveries with.
const SECRET: &str = "whsec_the-dashboards-test-secret";
/// A delivery body as Composio sends it (V3).
const EVENT: &str = r#"{"id":"evt_dash_001","timestamp":"2026-01-29T10:30:00Z","type":"composio.trigger.message","metadata":{"log_id":"log_dash_001","trigger_slug":"GITHUB_PUSH_EVENT","trigger_id":"ti_dash_001","connected_account_id":"ca_dash_001","auth_config_id":"ac_dash_001","user_id":"user_dash_001"},"data":{"ref":"refs/heads/main"}}"#;
/// A key Composio does not know.
const UNKNOWN: &str = "ak_nobody_0123456789abcdef";
/// Keys that first arrive while Composio fails, and all at once.
const OUTAGE: &str = "ak_outage_0123456789abcde";
const STORM: &str = "ak_storm_0123456789abcdef";
/// Requests of the miss storm: all for STORM while Composio holds its answer.
const STORM_SIZE: u64 = 20;
/// Requests while Composio fails: enough for the alerts' floors (5 503s, 3
/// undecided calls in 5 minutes).
const OUTAGE_REQUESTS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_returns_data_from_a_real_prometheus_after_real_traffic() {
    let composio = composio().await;
    composio.add_session(
        STORM,
        StandIn::document_for("erin@example.com", "Erin", "member"),
    );
    let redis = RedisServer::start();
    let dir = Scratch::new("server");
    let pepper = dir.write("pepper", PEPPER);
    let secret = dir.write("secret", SECRET);
    let app = app().await;
    let forward = format!("http://{app}/hook");
    let redis_url = redis.url();
    let server = Server::start(
        &composio.base_url(),
        &[
            "--redis-url",
            &redis_url,
            "--redis-pepper-file",
            &pepper,
            "--webhook-forward",
            &forward,
            "--webhook-secret-file",
            &secret,
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    // The first verification starts the subscription to the fleet's stream.
    let first = client()
        .get(server.url("/verify"))
        .header("x-api-key", ADMIN);
    assert_eq!(first.send().await.unwrap().status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sample(&scrape(&server).await, "composio_auth_shared_subscribed") != 1.0 {
        assert!(
            Instant::now() < deadline,
            "no subscription to Redis in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut prometheus = Prometheus::start(server.addr, &deploy("prometheus/alerts.yml")).await;
    // A first scrape before the traffic: every rate has its baseline.
    prometheus
        .until(&format!(r#"up{{job="{JOB}"}} == 1"#), |v| v == 1.0)
        .await;

    traffic(&server, &composio).await;

    // Prometheus holds what the server counted, once it scraped after the traffic.
    let counted = [
        "composio_auth_requests_total",
        "composio_auth_cache_total",
        "composio_auth_upstream_calls_total",
        "composio_auth_shared_invalidations_total",
        "composio_auth_webhook_deliveries_total",
        "composio_auth_webhook_rejections_total",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    while sample(
        &scrape(&server).await,
        r#"composio_auth_shared_invalidations_total{direction="received"}"#,
    ) < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the invalidation never came back from Redis"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for name in counted {
        let total = sample(&scrape(&server).await, name);
        assert!(total > 0.0, "{name} moved");
        prometheus
            .until(&format!(r#"sum({name}{{job="{JOB}"}})"#), |v| v == total)
            .await;
    }

    // The traffic shows under each label value it was made for.
    let made = [
        (
            "composio_auth_requests_total",
            "result",
            "allowed forbidden unauthorized unavailable",
        ),
        (
            "composio_auth_cache_total",
            "result",
            "hit miss negative_hit",
        ),
        (
            "composio_auth_upstream_calls_total",
            "outcome",
            "allowed rejected undecided",
        ),
        ("composio_auth_shared_total", "result", "verified"),
        (
            "composio_auth_shared_invalidations_total",
            "direction",
            "sent received",
        ),
        (
            "composio_auth_webhook_deliveries_total",
            "result",
            "handled duplicate failed",
        ),
        (
            "composio_auth_webhook_rejections_total",
            "reason",
            "method headers timestamp signature payload",
        ),
    ];
    for (name, label, values) in made {
        let result = prometheus
            .query(&format!(r#"sum by ({label}) ({name}{{job="{JOB}"}}) > 0"#))
            .await;
        let seen: BTreeSet<&str> = result
            .iter()
            .map(|series| series["metric"][label].as_str().unwrap())
            .collect();
        for wanted in values.split(' ') {
            assert!(
                seen.contains(wanted),
                "{name}{{{label}={wanted:?}}}: {seen:?}"
            );
        }
    }

    // Every panel's every query, for all instances and for the server's.
    let instance = server.addr.to_string();
    let escaped = instance.replace('.', r"\\.");
    let mut evaluated = 0;
    for target in targets(&dashboard()) {
        for instances in [".*", escaped.as_str()] {
            let expr = target
                .expr
                .replace("$__rate_interval", RATE_INTERVAL)
                .replace("$job", JOB)
                .replace("$instance", instances);
            let result = prometheus.query(&expr).await;
            let values: Vec<f64> = result
                .iter()
                .map(|series| {
                    for label in series["metric"].as_object().unwrap().keys() {
                        assert!(
                            ALLOWED_LABELS.contains(&label.as_str()) || label == "__name__",
                            "{}: label {label}",
                            target.panel
                        );
                    }
                    value(&series["value"])
                })
                .collect();
            assert!(
                values.iter().any(|v| v.is_finite()),
                "{} ({}) returned no data: {result:?}\n{expr}",
                target.panel,
                target.legend
            );
            if std::env::var_os("DASHBOARDS_SHOW").is_some() {
                eprintln!(
                    "{} / {} [{instances}]: {values:?}",
                    target.panel, target.legend
                );
            }
            if target.legend == "joins (estimated)" {
                assert!(values[0] > 0.0, "the miss storm joined: {values:?}");
            }
            evaluated += 1;
        }
    }
    assert!(evaluated >= 40, "{evaluated} queries");

    // The variables' own queries (label_values) find the job and the server.
    let jobs = prometheus
        .labels("job", "composio_auth_requests_total")
        .await;
    assert!(jobs.contains(&JOB.to_owned()), "{jobs:?}");
    let instances = prometheus
        .labels(
            "instance",
            &format!(r#"composio_auth_requests_total{{job="{JOB}"}}"#),
        )
        .await;
    assert_eq!(instances, std::slice::from_ref(&instance));

    // No series of the server's has a label beyond the allowed ones.
    let series = prometheus
        .get(
            "/api/v1/series",
            &[("match[]", r#"{__name__=~"composio_auth_.+"}"#)],
        )
        .await;
    let series = series["data"].as_array().unwrap();
    assert!(series.len() >= 30, "{} series", series.len());
    for one in series {
        for label in one.as_object().unwrap().keys() {
            assert!(
                ALLOWED_LABELS.contains(&label.as_str()) || label == "__name__",
                "{one}"
            );
        }
    }

    rules_evaluate_on_real_series(&prometheus, &instance).await;
    prometheus.stop();
}

/// The traffic every panel shows.
async fn traffic(server: &Server, composio: &StandIn) {
    let verify = |key: Option<&'static str>, query: &'static str| {
        let mut request = client().get(server.url(&format!("/verify{query}")));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // Valid keys: a miss then hits; a route's policy refusing one (403).
    for _ in 0..5 {
        assert_eq!(verify(Some(ADMIN), "").await, 200);
    }
    for _ in 0..3 {
        assert_eq!(verify(Some(MEMBER), "").await, 200);
    }
    for _ in 0..2 {
        assert_eq!(verify(Some(MEMBER), "?role=admin").await, 403);
    }
    // An unknown key: a miss, then the negative cache; no key at all.
    for _ in 0..4 {
        assert_eq!(verify(Some(UNKNOWN), "").await, 401);
    }
    assert_eq!(verify(None, "").await, 401);
    // Composio failing: each request a call, undecided, 503.
    composio.fail_with(Reply::html(502));
    for _ in 0..OUTAGE_REQUESTS {
        assert_eq!(verify(Some(OUTAGE), "").await, 503);
    }
    composio.recover();

    // A miss storm: every request of one new key waits for one call.
    composio.set_latency(Duration::from_millis(30));
    let misses = sample(
        &scrape(server).await,
        r#"composio_auth_cache_total{result="miss"}"#,
    );
    let calls = composio.calls();
    composio.hold();
    let storm: Vec<_> = (0..STORM_SIZE)
        .map(|_| tokio::spawn(verify(Some(STORM), "")))
        .collect();
    composio.wait_for_calls(calls + 1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sample(
        &scrape(server).await,
        r#"composio_auth_cache_total{result="miss"}"#,
    ) < misses + STORM_SIZE as f64
    {
        assert!(
            Instant::now() < deadline,
            "the storm's misses were not counted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    composio.release();
    for request in storm {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(composio.calls_for(STORM), 1, "one call for the whole storm");
    composio.set_latency(Duration::ZERO);

    // An invalidation through Redis (sent, then received from the stream).
    let invalidated = client()
        .post(format!("http://{}/invalidate", server.admin.unwrap()))
        .body(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(invalidated.status(), 204);

    // Webhook deliveries: handled, a duplicate, one the app refuses, and the
    // layer's refusals.
    let webhook = server.url("/composio/webhook");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let deliver = |headers: HeaderMap, body: &'static str| {
        let request = client().post(&webhook).headers(headers).body(body);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let signed = |secret: &str, id: &str, body: &str, at: u64| {
        sign_delivery(secret, id, body.as_bytes(), at)
    };
    assert_eq!(
        deliver(signed(SECRET, "msg_dash_1", EVENT, now), EVENT).await,
        202
    );
    assert_eq!(
        deliver(signed(SECRET, "msg_dash_2", EVENT, now), EVENT).await,
        202
    );
    assert_eq!(
        deliver(signed(SECRET, "msg_dash_1", EVENT, now), EVENT).await,
        200
    );
    let mut refused = signed(SECRET, "msg_dash_3", EVENT, now);
    refused.insert("x-app-answer", HeaderValue::from_static("500"));
    assert_eq!(deliver(refused, EVENT).await, 500);
    assert_eq!(
        deliver(signed("whsec_another", "msg_dash_4", EVENT, now), EVENT).await,
        401
    );
    assert_eq!(
        deliver(signed(SECRET, "msg_dash_5", EVENT, now - 3600), EVENT).await,
        401
    );
    assert_eq!(deliver(HeaderMap::new(), EVENT).await, 401);
    let not_an_event = r#"{"hello":"world"}"#;
    assert_eq!(
        deliver(
            signed(SECRET, "msg_dash_6", not_an_event, now),
            not_an_event
        )
        .await,
        400
    );
    let get = client().get(&webhook).send().await.unwrap().status();
    assert_eq!(get, 405);
}

/// The rules of alerts.yml, loaded by the real Prometheus: each evaluates without
/// error against the server's series, carries its runbook and severity, selects
/// the assumed job and no per-key label; an alert made for the outage goes
/// pending on the real data.
async fn rules_evaluate_on_real_series(prometheus: &Prometheus, instance: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let rules = loop {
        let answer = prometheus.get("/api/v1/rules", &[]).await;
        let rules: Vec<Value> = answer["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|group| group["rules"].as_array().unwrap().clone())
            .collect();
        if !rules.is_empty() && rules.iter().all(|rule| rule["health"] == "ok") {
            break rules;
        }
        let failing: Vec<_> = rules.iter().filter(|r| r["health"] == "err").collect();
        assert!(failing.is_empty(), "rules failing: {failing:?}");
        assert!(
            Instant::now() < deadline,
            "rules not evaluated in 30 s: {rules:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let names: Vec<&str> = rules.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ALERTS);
    for rule in &rules {
        let name = rule["name"].as_str().unwrap();
        assert_eq!(rule["type"], "alerting", "{name}");
        assert_eq!(rule["lastError"].as_str().unwrap_or_default(), "", "{name}");
        assert!(rule["duration"].as_f64().unwrap() >= 60.0, "{name}: for");
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning"].contains(&severity),
            "{name}: severity"
        );
        let runbook = rule["annotations"]["runbook"].as_str().unwrap_or_default();
        assert!(runbook.len() > 200, "{name}: runbook");
        assert!(
            rule["annotations"]["summary"].is_string(),
            "{name}: summary"
        );
        let query = rule["query"].as_str().unwrap();
        for selector in selectors(query) {
            assert!(
                selector.contains(&format!(r#"job="{JOB}""#)),
                "{name}: {selector}"
            );
        }
        for label in label_names(query) {
            assert!(ALLOWED_LABELS.contains(&label.as_str()), "{name}: {label}");
        }
    }
    // The outage's alerts go pending on the real series (5 of the 40 requests
    // since the first scrape answered 503, 5 of the 8 Composio calls undecided),
    // and no other: the rest of the traffic stays under every threshold or floor.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alerts = prometheus.get("/api/v1/alerts", &[]).await;
        let alerts = alerts["data"]["alerts"].as_array().unwrap();
        let active: BTreeSet<(&str, &str)> = alerts
            .iter()
            .map(|alert| {
                let labels = &alert["labels"];
                let name = labels["alertname"].as_str().unwrap();
                (name, labels["instance"].as_str().unwrap_or_default())
            })
            .collect();
        let expected: BTreeSet<(&str, &str)> = [
            ("ComposioAuthUnavailable", instance),
            ("ComposioAuthUpstreamUndecided", instance),
        ]
        .into();
        if active == expected {
            break;
        }
        assert!(
            active.is_subset(&expected) && Instant::now() < deadline,
            "alerts {active:?}, not {expected:?}: {alerts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The webhook relay's app: 202, or the status in `x-app-answer`.
async fn app() -> SocketAddr {
    async fn hook(headers: HeaderMap) -> StatusCode {
        headers
            .get("x-app-answer")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .and_then(|code| StatusCode::from_u16(code).ok())
            .unwrap_or(StatusCode::ACCEPTED)
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/hook", any(hook));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn scrape(server: &Server) -> String {
    let answer = client().get(server.url("/metrics")).send().await.unwrap();
    answer.text().await.unwrap()
}

/// The sum of the samples of `name` (a name, or a name and its labels exactly as
/// the exporter writes them) in a `/metrics` text.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            *series == name || (!name.contains('{') && series.starts_with(&format!("{name}{{")))
        })
        .map(|(_, value)| value.parse::<f64>().unwrap())
        .sum()
}

/// A sample's `[time, "value"]` from Prometheus' API.
fn value(pair: &Value) -> f64 {
    pair[1].as_str().unwrap().parse().unwrap()
}

/// The dashboard, as shipped.
fn dashboard() -> Value {
    serde_json::from_str(&read("grafana/composio-auth.json")).expect("the dashboard is JSON")
}

/// A panel's query.
struct Target {
    panel: String,
    expr: String,
    legend: String,
}

fn targets(dashboard: &Value) -> Vec<Target> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|panel| panel["type"] != "row")
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap().to_owned();
            panel["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |target| Target {
                    panel: title.clone(),
                    expr: target["expr"].as_str().unwrap().to_owned(),
                    legend: target["legendFormat"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                })
        })
        .collect()
}

/// The tokens of a PromQL expression, with enough care for its strings.
fn tokens(expr: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                let mut string = String::from(c);
                while let Some(d) = chars.next() {
                    string.push(d);
                    if d == '\\' && c != '`' {
                        string.extend(chars.next());
                    } else if d == c {
                        break;
                    }
                }
                tokens.push(string);
            }
            c if c.is_alphanumeric() || c == '_' || c == ':' || c == '$' => {
                let mut word = String::from(c);
                while let Some(&d) = chars.peek() {
                    if d.is_alphanumeric() || d == '_' || d == ':' || d == '.' {
                        word.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                tokens.push(word);
            }
            c if c.is_whitespace() => {}
            '=' | '!' | '~' => {
                // `=`, `=~`, `!=`, `!~`, `==`
                let mut op = String::from(c);
                while let Some(&d) = chars.peek() {
                    if matches!(d, '=' | '~') {
                        op.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                tokens.push(op);
            }
            c => tokens.push(c.to_string()),
        }
    }
    tokens
}

/// The label names an expression names: in selectors' matchers and in `by`,
/// `without`, `on`, `ignoring`, `group_left` and `group_right` lists.
fn label_names(expr: &str) -> Vec<String> {
    let tokens = tokens(expr);
    let mut names = Vec::new();
    let mut in_selector = false;
    let mut in_list = false;
    for (n, token) in tokens.iter().enumerate() {
        match token.as_str() {
            "{" => in_selector = true,
            "}" => in_selector = false,
            "(" if n > 0
                && [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&tokens[n - 1].as_str()) =>
            {
                in_list = true
            }
            ")" => in_list = false,
            "," => {}
            word if in_list => names.push(word.to_owned()),
            word if in_selector
                && tokens
                    .get(n + 1)
                    .is_some_and(|op| ["=", "!=", "=~", "!~"].contains(&op.as_str())) =>
            {
                names.push(word.to_owned())
            }
            _ => {}
        }
    }
    names
}

/// The selectors (`{...}`) of an expression, as written.
fn selectors(expr: &str) -> Vec<String> {
    let tokens = tokens(expr);
    let mut selectors = Vec::new();
    let mut current: Option<String> = None;
    for token in tokens {
        match (token.as_str(), current.as_mut()) {
            ("{", None) => current = Some(String::new()),
            ("}", Some(_)) => selectors.extend(current.take()),
            (token, Some(selector)) => selector.push_str(token),
            _ => {}
        }
    }
    selectors
}

/// The labels a legend shows (`{{result}}`).
fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|part| part.split_once("}}"))
        .map(|(name, _)| name.trim().to_owned())
        .collect()
}

/// A directory of its own, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "composio-auth-dashboards-{what}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes `contents` to `name`; its path.
    fn write(&self, name: &str, contents: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real Prometheus (Debian's package) on a free loopback port, scraping one
/// server every second as job `JOB`, with `rules`, its storage in a scratch
/// directory; stopped by its pid.
struct Prometheus {
    port: u16,
    dir: Scratch,
    child: Option<Child>,
}

impl Prometheus {
    async fn start(target: SocketAddr, rules: &Path) -> Self {
        let dir = Scratch::new("prometheus");
        let port = free_port();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: {JOB}\n    scrape_interval: 1s\n    \
             static_configs:\n      - targets: [\"{target}\"]\n",
            rules = rules.display()
        );
        let config = dir.write("prometheus.yml", &config);
        let log = std::fs::File::create(dir.0.join("prometheus.log")).unwrap();
        let child = Command::new(installed("prometheus", "prometheus"))
            .arg(format!("--config.file={config}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut prometheus = Self {
            port,
            dir,
            child: Some(child),
        };
        prometheus.wait_until_ready().await;
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("prometheus.log")).unwrap_or_default()
    }

    /// Polls `/-/ready` until Prometheus answers 200.
    async fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("http://127.0.0.1:{}/-/ready", self.port);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("prometheus exited: {status}\n{}", self.log());
            }
            let ready = client().get(&url).send().await;
            if ready.is_ok_and(|answer| answer.status().is_success()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in 30 s\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GET `path` of the HTTP API with `params`; the answer's JSON.
    async fn get(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let url = reqwest::Url::parse_with_params(
            &format!("http://127.0.0.1:{}{path}", self.port),
            params,
        )
        .unwrap();
        let answer = client().get(url).send().await.unwrap();
        let status = answer.status();
        let json: Value = answer.json().await.unwrap();
        assert!(
            status.is_success() && json["status"] == "success",
            "{path} {params:?}: {json}"
        );
        json
    }

    /// The instant vector `expr` evaluates to now.
    async fn query(&self, expr: &str) -> Vec<Value> {
        let answer = self.get("/api/v1/query", &[("query", expr)]).await;
        assert_eq!(answer["data"]["resultType"], "vector", "{expr}");
        answer["data"]["result"].as_array().unwrap().clone()
    }

    /// Polls `expr` until its first sample satisfies `done`.
    async fn until(&self, expr: &str, done: impl Fn(f64) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let result = self.query(expr).await;
            if result
                .first()
                .is_some_and(|series| done(value(&series["value"])))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{expr} is still {result:?} after 30 s\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The values of `label` on the series `selector` matches (Grafana's
    /// `label_values(selector, label)`).
    async fn labels(&self, label: &str, selector: &str) -> Vec<String> {
        let answer = self
            .get(
                &format!("/api/v1/label/{label}/values"),
                &[("match[]", selector)],
            )
            .await;
        serde_json::from_value(answer["data"].clone()).unwrap()
    }

    /// SIGTERM to its pid, then waits for it to exit (SIGKILL after 10 s).
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal("TERM", &child.id().to_string());
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                if !std::thread::panicking() {
                    panic!("prometheus ignored SIGTERM for 10 s\n{}", self.log());
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}
