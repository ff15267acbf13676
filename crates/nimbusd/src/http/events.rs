//! `GET /v1/events`: the telemetry stream as server-sent events, filtered to the caller's tenant.
//!
//! With `after=SEQ` (or a `Last-Event-ID` header, which browsers send on reconnect) the stored
//! events after that sequence number are replayed first, then live ones follow without a gap:
//! the live subscription starts before the replay is read, and duplicates are skipped by seq.

use std::convert::Infallible;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use futures::{Stream, StreamExt};
use nimbus_store::EventFilter;
use nimbus_types::MachineId;
use nimbus_types::event::Event;
use serde::Deserialize;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::http::AppState;
use crate::http::auth::Caller;
use crate::http::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/events", get(stream))
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    /// Replay stored events with a sequence number above this first.
    after: Option<i64>,
    /// Only events of this machine.
    machine: Option<String>,
}

/// Follow telemetry events (server-sent events; `id` is the event's sequence number).
#[utoipa::path(get, path = "/v1/events", tag = "events", security(("bearer" = [])),
    params(
        ("after" = Option<i64>, Query, description = "replay stored events after this sequence number"),
        ("machine" = Option<String>, Query, description = "only events of this machine"),
    ),
    responses((status = 200, description = "text/event-stream of events", body = Event)))]
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(query) = query.map_err(|err| ApiError::bad_request(err.body_text()))?;
    let machine_id = match &query.machine {
        Some(raw) => Some(
            raw.parse::<MachineId>()
                .map_err(|_| ApiError::invalid_field("machine", "must be a machine id"))?,
        ),
        None => None,
    };
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let after = last_event_id.or(query.after);
    let scope = caller.scope();

    let live = state.fleet.telemetry().subscribe();
    let replay = match after {
        Some(after) => {
            state
                .store
                .list_events(&EventFilter {
                    tenant_id: scope,
                    machine_id,
                    after_seq: Some(after),
                    limit: Some(10_000),
                })
                .await?
        }
        None => Vec::new(),
    };
    let high_water = replay.last().map(|e| e.seq).or(after).unwrap_or(0);

    let visible = move |event: &Event| {
        scope.is_none_or(|tenant| event.tenant_id == Some(tenant))
            && machine_id.is_none_or(|machine| event.machine_id == Some(machine))
    };
    let replayed = futures::stream::iter(replay.into_iter().map(|event| Ok(to_sse(&event))));
    let live = BroadcastStream::new(live).filter_map(move |item| {
        let out = match item {
            Ok(event) if visible(&event) && (event.seq == 0 || event.seq > high_water) => {
                Some(Ok(to_sse(&event)))
            }
            Ok(_) => None,
            Err(BroadcastStreamRecvError::Lagged(n)) => Some(Ok(SseEvent::default().comment(
                format!("lagged: {n} events skipped; reconnect with Last-Event-ID to replay them"),
            ))),
        };
        futures::future::ready(out)
    });
    let shutdown = state.shutdown.clone().cancelled_owned();
    let stream = replayed.chain(live).take_until(shutdown);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn to_sse(event: &Event) -> SseEvent {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".into());
    let sse = SseEvent::default().event(event.name.as_str()).data(data);
    if event.seq > 0 {
        sse.id(event.seq.to_string())
    } else {
        sse
    }
}
