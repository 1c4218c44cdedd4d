//! Before the model is loaded the server already answers: 503 on /health and on the API,
//! with an OpenAI-shaped error and Retry-After; /metrics still parses. Needs no model.

use kvmesh_server::client::Client;
use kvmesh_server::{app, ApiSettings, AppState, RequestLimits};
use serde_json::json;

#[tokio::test]
async fn answers_503_while_loading() {
    let state = AppState::new(ApiSettings {
        served_model_names: vec!["m".into()],
        api_key: None,
        limits: RequestLimits::default(),
        max_body_bytes: 1024,
        max_queued_requests: 1,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app::router(state)).await });
    let client = Client::new(&format!("http://{addr}"), None).unwrap();

    let health = client.get("/health").await.unwrap();
    assert_eq!(health.status, 503);
    assert_eq!(&health.body[..], b"loading\n");
    let r = client
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "hi"}]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("loading"));
    let metrics = client.get("/metrics").await.unwrap();
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    assert!(
        text.contains("kvmesh:requests_rejected_total{model_name=\"m\",reason=\"unavailable\"} 1"),
        "{text}"
    );
}
