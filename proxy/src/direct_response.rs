//! The direct-response network filter: a listener that answers every connection with fixed
//! bytes and closes it (Envoy's `direct_response`; kuma-cp's zone ingress with no
//! destinations answers its identity), or closes it at once (a chain without filters).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// How long the answer may take to leave before the connection is closed anyway (Envoy's
/// default `delayed_close_timeout`).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Writes `answer` (if any) and closes the connection without reading from it.
pub(crate) async fn answer<S: AsyncWrite + Unpin>(
    mut stream: S,
    answer: &[u8],
    listener: &str,
    peer: SocketAddr,
) {
    if answer.is_empty() {
        return;
    }
    let written = tokio::time::timeout(FLUSH_TIMEOUT, async {
        stream.write_all(answer).await?;
        stream.shutdown().await
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(listener, %peer, "direct response not delivered: {e}"),
        Err(_) => {
            tracing::debug!(listener, %peer, "direct response not flushed within {FLUSH_TIMEOUT:?}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::tests::pair;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn the_answer_is_written_then_the_connection_ends() {
        let (client, mut server_side) = pair().await;
        let peer = client.peer_addr().unwrap();
        answer(
            client,
            b"{\"proxy\":\"default.ingress\"}",
            "inbound:x",
            peer,
        )
        .await;
        let mut got = Vec::new();
        server_side.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"{\"proxy\":\"default.ingress\"}");
    }

    #[tokio::test]
    async fn an_empty_answer_closes_at_once() {
        let (client, mut server_side) = pair().await;
        let peer = client.peer_addr().unwrap();
        answer(client, b"", "outbound:x", peer).await;
        let mut got = Vec::new();
        server_side.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty());
    }
}
