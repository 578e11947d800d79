//! Protocol upgrades (ComfyUI's `/ws` WebSocket): the handshake goes upstream with its
//! `Connection`/`Upgrade` headers, and after `101 Switching Protocols` the two
//! connections are spliced and bytes copied both ways until either side closes.

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::{forward, Body, BoxError, State};

/// Whether the client asks to switch protocols.
pub(super) fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(UPGRADE)
        && req
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

pub(super) async fn relay(state: &State, mut req: Request<Incoming>) -> Response<Body> {
    let client_side = hyper::upgrade::on(&mut req);
    let req = req.map(|b| b.map_err(BoxError::from).boxed());
    let mut resp = match forward::send_raw(state, req, true).await {
        Ok(resp) => resp,
        Err(error) => return error,
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(client_side, upstream_side) {
                Ok((client, upstream)) => {
                    let (mut c, mut u) = (TokioIo::new(client), TokioIo::new(upstream));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                        tracing::debug!("upgraded connection: {e}");
                    }
                }
                Err(e) => tracing::debug!("upgrade: {e}"),
            }
        });
    }
    resp.map(|b| b.map_err(BoxError::from).boxed())
}
