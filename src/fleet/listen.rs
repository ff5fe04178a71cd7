//! The listener: one dedicated connection per pod that `LISTEN`s for permit releases and
//! context changes and fans them out as [`Notice`]s, so waiters wake at once instead of at
//! their next poll. It is only an accelerator: every waiter also polls, so a broken listener
//! (reconnected with backoff, then a `Resync` to everyone) costs latency, never correctness.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::AsyncMessage;

use super::{BUDGET_CHANNEL, CONTEXT_CHANNEL, Notice, Shared, db};

/// Keeps a listening connection open until the fleet stops.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let stop = shared.stop.clone();
        tokio::select! {
            _ = stop.cancelled() => return,
            r = listen_once(&shared) => {
                match r {
                    // A session that worked resets the backoff.
                    Ok(()) => backoff = Duration::from_millis(200),
                    Err(e) => tracing::debug!(error = %e, "fleet: listener connection failed"),
                }
            }
        }
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One listening session: returns when the connection ends.
async fn listen_once(shared: &Shared) -> Result<(), String> {
    let pg = db::pg_config(&shared.cfg, shared.io_timeout).map_err(|e| e.to_string())?;
    let tls = db::tls(&shared.cfg).map_err(|e| e.to_string())?;
    let (client, mut conn) = pg.connect(tls).await.map_err(|e| e.to_string())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The connection only makes progress while polled; it forwards what it receives.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    let listening = tokio::time::timeout(
        shared.io_timeout,
        client.batch_execute(&format!(
            "LISTEN {BUDGET_CHANNEL}; LISTEN {CONTEXT_CHANNEL}"
        )),
    )
    .await;
    if !matches!(listening, Ok(Ok(()))) {
        driver.abort();
        return Err("LISTEN failed".into());
    }
    // Anything sent while we were not listening is lost: tell everyone to look again.
    let _ = shared.notices.send(Notice::Resync);
    loop {
        let (channel, payload) = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => m,
                None => break,
            },
            // A partition can leave a silent connection: ping it now and then.
            _ = tokio::time::sleep(shared.cfg.lease) => {
                let ping = tokio::time::timeout(shared.io_timeout, client.simple_query("")).await;
                if matches!(ping, Ok(Ok(_))) {
                    continue;
                }
                break;
            }
        };
        let notice = if channel == BUDGET_CHANNEL {
            Notice::Budget(payload)
        } else {
            Notice::Context
        };
        let _ = shared.notices.send(notice);
    }
    driver.abort();
    drop(client);
    Ok(())
}
