//! Pools through the API: every bad input is a 422 naming its field and stores nothing; pools
//! are per tenant; a signed `workflow_job` delivery wakes the autoscaler, which starts a machine
//! for the job at once; a redelivery starts none.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::common::{Api, Reply, api, assert_error, host_platform};

const SECRET: &str = "hook-s3cr3t-value";

fn pool_body(name: &str, labels: &[&str]) -> Value {
    let (os, arch) = host_platform();
    json!({"name": name, "provider": "local", "labels": labels, "os": os, "arch": arch, "max": 3})
}

fn with(mut body: Value, field: &str, value: Value) -> Value {
    body[field] = value;
    body
}

async fn create(api: &Api, token: &str, body: Value) -> Reply {
    api.call("POST", "/v1/tenants/acme/pools", Some(token), Some(body))
        .await
}

fn assert_field(reply: &Reply, field: &str) {
    assert_error(reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(reply.body["error"]["field"], field, "{}", reply.text);
}

#[tokio::test]
async fn every_bad_pool_setting_is_a_422_naming_the_field_and_stores_nothing() {
    let api = api().await;
    let (_, token) = api.tenant("acme").await;
    let base = pool_body("linux", &["self-hosted", "linux"]);
    let schedule =
        |cron: &str, zone: &str, n: u32| json!([{"cron": cron, "timezone": zone, "min_idle": n}]);
    let cases: Vec<(Value, &str)> = vec![
        (with(base.clone(), "min_idle", json!(5)), "min_idle"),
        (with(base.clone(), "max", json!(-1)), "max"),
        (with(base.clone(), "max", json!(1_000_000)), "max"),
        (with(base.clone(), "provider", json!("nope")), "provider"),
        (with(base.clone(), "name", json!("Not A Name")), "name"),
        (with(base.clone(), "labels", json!([])), "labels"),
        (
            with(base.clone(), "labels", json!(["ok", "bad label"])),
            "labels[1]",
        ),
        (with(base.clone(), "os", json!("plan9")), "os"),
        (with(base.clone(), "max_jobs", json!(0)), "max_jobs"),
        (
            with(base.clone(), "schedules", schedule("61 * * * *", "UTC", 1)),
            "schedules[0].cron",
        ),
        (
            with(
                base.clone(),
                "schedules",
                schedule("* 8-18 * * mon-fri", "Mars/Olympus", 1),
            ),
            "schedules[0].timezone",
        ),
        (
            with(base.clone(), "schedules", schedule("* * * * *", "UTC", 9)),
            "schedules[0].min_idle",
        ),
        (
            with(base.clone(), "monthly_budget", json!(100.0)),
            "monthly_budget",
        ),
        (
            with(base.clone(), "hourly_cost", json!(-0.5)),
            "hourly_cost",
        ),
        (with(base.clone(), "colour", json!("blue")), "colour"),
    ];
    for (body, field) in cases {
        let reply = create(&api, &token, body.clone()).await;
        assert_field(&reply, field);
        let message = reply.body["error"]["message"].as_str().unwrap();
        assert!(!message.contains("panick"), "{message}");
    }
    let list = api
        .call("GET", "/v1/tenants/acme/pools", Some(&token), None)
        .await;
    assert_eq!(list.body["pools"], json!([]), "nothing was stored");

    // The first good pool; then the same labels (another order and case) are refused.
    let reply = create(&api, &token, base.clone()).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let reply = create(
        &api,
        &token,
        pool_body("linux-2", &["LINUX", "self-hosted"]),
    )
    .await;
    assert_field(&reply, "labels");
    let reply = create(&api, &token, base.clone()).await;
    assert_error(&reply, StatusCode::CONFLICT, "conflict");

    // PATCH is validated as a whole, and a failed one changes nothing.
    let path = "/v1/tenants/acme/pools/linux";
    let reply = api
        .call("PATCH", path, Some(&token), Some(json!({"min_idle": 4})))
        .await;
    assert_field(&reply, "min_idle");
    let reply = api
        .call(
            "PATCH",
            path,
            Some(&token),
            Some(json!({"name": "renamed"})),
        )
        .await;
    assert_field(&reply, "name");
    let reply = api
        .call(
            "PATCH",
            path,
            Some(&token),
            Some(json!({"schedules": [{"cron": "* * * *", "min_idle": 1}]})),
        )
        .await;
    assert_field(&reply, "schedules[0].cron");
    // Labels another pool serves are refused on update too; the pool keeps its own.
    let reply = create(&api, &token, pool_body("mac", &["self-hosted", "macos"])).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let reply = api
        .call(
            "PATCH",
            "/v1/tenants/acme/pools/mac",
            Some(&token),
            Some(json!({"labels": ["Linux", "self-hosted"]})),
        )
        .await;
    assert_field(&reply, "labels");
    let reply = api
        .call("PATCH", path, Some(&token), Some(json!({"max": 1_000_000})))
        .await;
    assert_field(&reply, "max");
    let reply = api.call("GET", path, Some(&token), None).await;
    assert_eq!(reply.body["min_idle"], 0, "{}", reply.text);
    assert!(reply.body.get("schedules").is_none(), "{}", reply.text);
}

#[tokio::test]
async fn pools_crud_with_status_and_tenant_isolation() {
    let api = api().await;
    let (_, token) = api.tenant("acme").await;
    let (_, other) = api.tenant("globex").await;
    let mut body = pool_body("linux", &["Self-Hosted", "linux"]);
    body["schedules"] =
        json!([{"cron": "* 8-18 * * mon-fri", "timezone": "Europe/Berlin", "min_idle": 2}]);
    body["hourly_cost"] = json!(0.25);
    body["monthly_budget"] = json!(500);
    let reply = create(&api, &token, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let id = reply.body["id"].as_str().unwrap().to_owned();
    assert_eq!(reply.body["labels"], json!(["linux", "self-hosted"]));
    assert_eq!(reply.body["provider"], "local");
    assert_eq!(reply.body["idle_timeout_secs"], 600);
    assert_eq!(reply.body["ephemeral"], true);

    // By name or id; the status shows what the autoscaler sees.
    for key in ["linux", id.as_str()] {
        let reply = api
            .call(
                "GET",
                &format!("/v1/tenants/acme/pools/{key}"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let status = &reply.body["status"];
        assert_eq!(status["queued_jobs"], 0, "{}", reply.text);
        assert_eq!(status["busy"], 0);
        assert_eq!(status["spent_this_month"], 0.0);
        assert!(status["last_decisions"].is_array());
    }
    // Another tenant sees nothing of it.
    let reply = api
        .call("GET", "/v1/tenants/acme/pools/linux", Some(&other), None)
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text);
    let reply = api
        .call("GET", "/v1/tenants/globex/pools", Some(&other), None)
        .await;
    assert_eq!(reply.body["pools"], json!([]));

    // PATCH changes only what it names; null clears an optional setting.
    let reply = api
        .call(
            "PATCH",
            "/v1/tenants/acme/pools/linux",
            Some(&token),
            Some(json!({"max": 10, "monthly_budget": null, "max_age_secs": 86400})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["max"], 10);
    assert_eq!(reply.body["max_age_secs"], 86400);
    assert!(reply.body.get("monthly_budget").is_none(), "{}", reply.text);
    assert_eq!(reply.body["hourly_cost"], 0.25);
    assert_eq!(reply.body["schedules"].as_array().unwrap().len(), 1);

    // A provider a pool uses cannot go; the pool can.
    let reply = api
        .call(
            "DELETE",
            "/v1/tenants/acme/providers/local",
            Some(&token),
            None,
        )
        .await;
    assert_error(&reply, StatusCode::CONFLICT, "conflict");
    let reply = api
        .call("DELETE", "/v1/tenants/acme/pools/linux", Some(&token), None)
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
    let reply = api
        .call("GET", "/v1/tenants/acme/pools/linux", Some(&token), None)
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);

    let doc = api.call("GET", "/v1/openapi.json", None, None).await;
    assert!(doc.body["paths"]["/v1/tenants/{tenant}/pools/{pool}"]["patch"].is_object());
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn deliver(api: &Api, tenant_id: &str, delivery: &str, job_id: u64) -> Reply {
    let body = json!({
        "action": "queued",
        "workflow_job": {"id": job_id, "run_id": 77, "labels": ["self-hosted", "linux"],
                         "runner_name": null, "status": "queued"},
        "repository": {"full_name": "acme-corp/app"},
    })
    .to_string()
    .into_bytes();
    let request = Request::builder()
        .method("POST")
        .uri(format!("/v1/tenants/{tenant_id}/forge/webhook"))
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-github-event", "workflow_job")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", sign(&body))
        .body(Body::from(body))
        .unwrap();
    api.send(request).await
}

async fn pool_machines(api: &Api, pool_id: &str) -> Vec<Value> {
    let reply = api.admin("GET", "/v1/machines?tenant=acme", None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body["machines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["pool_id"] == pool_id)
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_signed_webhook_wakes_the_autoscaler_and_a_redelivery_does_not_count_twice() {
    let api = api().await;
    let (tenant_id, token) = api.tenant("acme").await;
    // The forge's API is unreachable: the machines' runner registration will fail, which is
    // not what this test looks at. The webhook secret is what matters.
    let reply = api
        .admin(
            "PUT",
            "/v1/tenants/acme/forge",
            Some(json!({"type": "github", "org": "acme-corp",
                        "config": {"repo": "app", "api_url": "http://127.0.0.1:9"},
                        "credentials": {"token": "ghp_t0ken", "webhook_secret": SECRET}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let reply = create(&api, &token, pool_body("linux", &["self-hosted", "linux"])).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let pool_id = reply.body["id"].as_str().unwrap().to_owned();
    api.state.fleet.start_autoscaler();

    let reply = deliver(&api, &tenant_id, "d-1", 41).await;
    assert_eq!(reply.body["result"], "recorded", "{}", reply.text);
    // The default interval is 10 s; the delivery wakes the loop well before that.
    let mut machines = Vec::new();
    for _ in 0..100 {
        machines = pool_machines(&api, &pool_id).await;
        if !machines.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(machines.len(), 1, "one machine for the queued job");

    let reply = deliver(&api, &tenant_id, "d-1", 41).await;
    assert_eq!(reply.body["result"], "replay", "{}", reply.text);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pool_machines(&api, &pool_id).await.len(), 1);

    let reply = api
        .call("GET", "/v1/tenants/acme/pools/linux", Some(&token), None)
        .await;
    let status = &reply.body["status"];
    assert_eq!(status["queued_jobs"], 1, "{}", reply.text);
    let decisions = status["last_decisions"].as_array().unwrap();
    let provision = decisions
        .iter()
        .find(|d| d["action"] == "provision")
        .unwrap_or_else(|| panic!("no provision decision: {}", reply.text));
    assert_eq!(provision["count"], 1);
    assert!(
        provision["reason"].as_str().unwrap().contains("1 queued"),
        "{provision}"
    );
    let metrics = api.call("GET", "/metrics", None, None).await;
    assert!(
        metrics
            .text
            .contains("nimbus_pool_queued_jobs{tenant=\"acme\",pool=\"linux\"} 1"),
        "{}",
        metrics.text
    );
}

#[tokio::test]
async fn a_pool_plan_is_a_dry_run_that_says_why() {
    let api = api().await;
    let (_, token) = api.tenant("acme").await;
    let body = with(
        pool_body("linux", &["self-hosted", "linux"]),
        "min_idle",
        json!(2),
    );
    let reply = create(&api, &token, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let pool_id = reply.body["id"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        let reply = api
            .call(
                "GET",
                "/v1/tenants/acme/pools/linux/plan",
                Some(&token),
                None,
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let decisions = reply.body["decisions"].as_array().unwrap();
        assert_eq!(decisions.len(), 1, "{}", reply.text);
        assert_eq!(decisions[0]["action"], "provision");
        assert_eq!(decisions[0]["count"], 2);
        assert!(
            decisions[0]["reason"]
                .as_str()
                .unwrap()
                .contains("warm target 2"),
            "{}",
            reply.text
        );
        assert_eq!(reply.body["status"]["desired"], 2);
    }
    // Nothing was done.
    let reply = api.admin("GET", "/v1/machines?tenant=acme", None).await;
    let machines = reply.body["machines"].as_array().unwrap();
    assert!(
        machines.iter().all(|m| m["pool_id"] != pool_id.as_str()),
        "{}",
        reply.text
    );
    let reply = api
        .call(
            "GET",
            "/v1/tenants/acme/pools/nope/plan",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn costs_per_tenant_and_pool_with_a_forecast() {
    let api = api().await;
    let (_, token) = api.tenant("acme").await;
    let (_, other) = api.tenant("globex").await;
    // $3.60 an hour is a tenth of a cent a second.
    let body = with(
        with(
            pool_body("linux", &["self-hosted", "linux"]),
            "min_idle",
            json!(2),
        ),
        "hourly_cost",
        json!(3.6),
    );
    let reply = create(&api, &token, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    api.state
        .fleet
        .autoscale_once(nimbus_types::now())
        .await
        .unwrap();
    // Both warm machines ready (billing has started and time-to-ready was observed).
    for _ in 0..400 {
        let reply = api.admin("GET", "/v1/machines?tenant=acme", None).await;
        let ready = reply.body["machines"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["state"] == "ready")
            .count();
        if ready == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    let reply = api.call("GET", "/v1/costs", Some(&token), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let rows = reply.body["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "only the caller's tenant: {}", reply.text);
    let row = &rows[0];
    assert_eq!(row["tenant"], "acme");
    assert_eq!(row["pool"], "linux");
    assert_eq!(row["machines"], 2);
    assert_eq!(row["usd_per_hour_now"], 7.2);
    let cost = row["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0 && cost < 0.1, "{cost}");
    let month = reply.body["month_to_date_usd"].as_f64().unwrap();
    let forecast = reply.body["forecast_month_end_usd"].as_f64().unwrap();
    // Two machines at $3.60 an hour kept running to the end of the month.
    assert!(forecast > month, "{}", reply.text);

    // Another tenant sees only its own (nothing), and not acme's by name.
    let reply = api.call("GET", "/v1/costs", Some(&other), None).await;
    assert_eq!(reply.body["rows"], json!([]), "{}", reply.text);
    let reply = api
        .call("GET", "/v1/costs?tenant=acme", Some(&other), None)
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text);
    // The admin sees every tenant; a pool narrows it; bad parameters name themselves.
    let reply = api
        .admin(
            "GET",
            "/v1/costs?tenant=acme&pool=linux&since=2020-01-01",
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["rows"][0]["machines"], 2);
    assert_eq!(reply.body["since"], "2020-01-01T00:00:00Z");
    for (query, field) in [
        ("pool=linux", "pool"),
        ("since=yesterday", "since"),
        ("since=2999-01-01", "since"),
    ] {
        let reply = api.admin("GET", &format!("/v1/costs?{query}"), None).await;
        assert_field(&reply, field);
    }
    let reply = api
        .admin("GET", "/v1/costs?tenant=acme&pool=nope", None)
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text);
    let reply = api.admin("GET", "/v1/costs?colour=blue", None).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);

    let metrics = api.call("GET", "/metrics", None, None).await;
    assert!(
        metrics
            .text
            .contains("nimbus_cost_dollars_total{tenant=\"acme\",pool=\"linux\"}"),
        "{}",
        metrics.text
    );
    // Time to ready, by stage and pool.
    assert!(
        metrics
            .text
            .contains("nimbus_machine_stage_seconds_count{stage=\"total\",pool=\"linux\"} 2"),
        "{}",
        metrics.text
    );
}

#[tokio::test]
async fn a_tenant_budget_is_set_by_the_admin_and_read_by_the_tenant() {
    let api = api().await;
    let (_, token) = api.tenant("acme").await;
    let path = "/v1/tenants/acme/budget";
    let reply = api.call("GET", path, Some(&token), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert!(reply.body.get("monthly_usd").is_none(), "{}", reply.text);
    assert_eq!(reply.body["spent_this_month_usd"], 0.0);

    let reply = api
        .call("PUT", path, Some(&token), Some(json!({"monthly_usd": 100})))
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "forbidden");
    for bad in [json!(-5), json!(0), json!("lots")] {
        let reply = api
            .admin("PUT", path, Some(json!({"monthly_usd": bad})))
            .await;
        assert_field(&reply, "monthly_usd");
    }
    let reply = api
        .admin("PUT", path, Some(json!({"monthly_usd": 100})))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["monthly_usd"], 100.0);
    let reply = api.call("GET", path, Some(&token), None).await;
    assert_eq!(reply.body["monthly_usd"], 100.0, "{}", reply.text);
    let reply = api
        .admin("PUT", path, Some(json!({"monthly_usd": null})))
        .await;
    assert!(reply.body.get("monthly_usd").is_none(), "{}", reply.text);
    let reply = api
        .admin(
            "PUT",
            "/v1/tenants/nobody/budget",
            Some(json!({"monthly_usd": 1})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text);
}

#[tokio::test]
async fn job_costs_split_each_machine_over_the_jobs_it_ran() {
    use nimbus_types::demand::{ForgeJob, JobRecord, JobStatus, LabelSet, Source};

    let api = api().await;
    let (tenant_id, token) = api.tenant("acme").await;
    let (_, other) = api.tenant("globex").await;
    let body = with(
        with(
            pool_body("linux", &["self-hosted", "linux"]),
            "min_idle",
            json!(1),
        ),
        "hourly_cost",
        json!(3.6),
    );
    let reply = create(&api, &token, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    api.state
        .fleet
        .autoscale_once(nimbus_types::now())
        .await
        .unwrap();
    let machine = loop {
        let reply = api.admin("GET", "/v1/machines?tenant=acme", None).await;
        let machines = reply.body["machines"].as_array().unwrap().clone();
        if let Some(ready) = machines.iter().find(|m| m["state"] == "ready") {
            break ready["id"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    // The forge's job events: jobs 1 and 2 ran on the machine's runner for 100 s and 60 s,
    // job 3 on a runner that is not Nimbus's.
    let tenant_id: nimbus_types::TenantId = tenant_id.parse().unwrap();
    let now = nimbus_types::now();
    let secs = time::Duration::seconds;
    let runner = format!("nimbus-{machine}");
    for (job_id, runner, queued, started, finished) in [
        (1u64, runner.as_str(), 400, 300, 200),
        (2, runner.as_str(), 150, 120, 60),
        (3, "someone-elses-runner", 100, 90, 30),
    ] {
        for (status, at) in [
            (JobStatus::Queued, queued),
            (JobStatus::InProgress, started),
            (JobStatus::Completed, finished),
        ] {
            let record = JobRecord {
                job: ForgeJob {
                    job_id,
                    run_id: 77,
                    repository: "acme/app".into(),
                    labels: LabelSet::new(["self-hosted", "linux"]),
                    status,
                },
                runner_name: (status != JobStatus::Queued).then(|| runner.to_owned()),
                first_seen: now - secs(queued),
                updated_at: now - secs(at),
                source: Source::Webhook,
            };
            api.state
                .store
                .record_job(tenant_id, None, &record)
                .await
                .unwrap();
        }
    }

    let reply = api.call("GET", "/v1/costs/jobs", Some(&token), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let jobs = reply.body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3, "{}", reply.text);
    let job = |id: u64| jobs.iter().find(|j| j["job_id"] == id).unwrap();
    assert_eq!(job(1)["machine_id"], machine.as_str());
    assert_eq!(job(1)["pool"], "linux");
    assert_eq!(job(1)["run_secs"], 100.0);
    assert_eq!(job(1)["wait_secs"], 100.0);
    // 100 s at $3.60 an hour.
    assert!(
        (job(1)["run_cost_usd"].as_f64().unwrap() - 0.1).abs() < 1e-9,
        "{}",
        reply.text
    );
    // The machine's cost so far is split 100:60 between its two jobs.
    let (one, two) = (
        job(1)["cost_usd"].as_f64().unwrap(),
        job(2)["cost_usd"].as_f64().unwrap(),
    );
    assert!(
        one > 0.0 && (one / two - 100.0 / 60.0).abs() < 1e-6,
        "{}",
        reply.text
    );
    assert!(job(3)["machine_id"].is_null(), "{}", reply.text);
    assert_eq!(job(3)["unpriced"], true);
    assert_eq!(job(3)["cost_usd"], 0.0);
    let total = reply.body["total_usd"].as_f64().unwrap();
    assert!((total - one - two).abs() < 1e-9, "{}", reply.text);

    // One job; one pool; another tenant sees none of it; bad parameters are 4xx.
    let reply = api
        .admin("GET", "/v1/costs/jobs?tenant=acme&job=2", None)
        .await;
    assert_eq!(
        reply.body["jobs"].as_array().unwrap().len(),
        1,
        "{}",
        reply.text
    );
    assert_eq!(reply.body["jobs"][0]["job_id"], 2);
    let reply = api
        .admin("GET", "/v1/costs/jobs?tenant=acme&pool=linux", None)
        .await;
    assert_eq!(
        reply.body["jobs"].as_array().unwrap().len(),
        2,
        "{}",
        reply.text
    );
    let reply = api.call("GET", "/v1/costs/jobs", Some(&other), None).await;
    assert_eq!(reply.body["jobs"], json!([]), "{}", reply.text);
    let reply = api
        .call("GET", "/v1/costs/jobs?tenant=acme", Some(&other), None)
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text);
    let reply = api.admin("GET", "/v1/costs/jobs?job=abc", None).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    let reply = api.admin("GET", "/v1/costs/jobs?since=soon", None).await;
    assert_field(&reply, "since");
    let reply = api
        .admin("GET", "/v1/costs/jobs?tenant=acme&pool=nope", None)
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text);
}
