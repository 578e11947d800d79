//! The proxy's own cost: requests straight to a fake upstream against the same
//! requests through `prip serve` with refinement off, and one adapter call through
//! the WASM sandbox against the same protocol code run natively. Reports ratios
//! measured in one run; run with `cargo bench -p prip-proxy --bench proxy`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use prip_protocols::Protocol;
use prip_test_support::fixture;
use support::{start_fake, start_proxy, Kind};

const REQUESTS: usize = 2000;
const ADAPTER_CALLS: usize = 2000;

/// Mean time of one request over a kept-alive connection.
async fn per_request(addr: SocketAddr, headers: &[(&str, &str)], body: &Bytes) -> Duration {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let send = || {
        let mut req = Request::post(format!("http://{addr}/prompt"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        client.request(req.body(Full::new(body.clone())).unwrap())
    };
    for _ in 0..100 {
        send().await.unwrap().into_body().collect().await.unwrap();
    }
    let t = Instant::now();
    for _ in 0..REQUESTS {
        let resp = send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
    }
    t.elapsed() / REQUESTS as u32
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = Bytes::from(fixture("comfyui/prompt_request_txt2img_api.json").to_string());
    let (direct, proxied) = rt.block_on(async {
        let fake = start_fake(Kind::ComfyUi).await;
        let (proxy, _) = start_proxy(&fake.url(), |_| {}).await;
        let direct = per_request(fake.addr, &[], &body).await;
        let proxied = per_request(proxy.local_addr(), &[("x-prip", "off")], &body).await;
        (direct, proxied)
    });
    println!("proxy, refinement off ({REQUESTS} POST /prompt, keep-alive, same run):");
    println!("  direct to upstream   {:>9.1} us/request", micros(direct));
    println!("  through prip serve   {:>9.1} us/request", micros(proxied));
    println!(
        "  overhead             {:>9.1} us/request, ratio {:.2}x",
        micros(proxied) - micros(direct),
        micros(proxied) / micros(direct)
    );

    let t = Instant::now();
    let host = prip_proxy::sandbox::AdapterHost::with_builtin(Default::default()).unwrap();
    let load = t.elapsed();
    let idx = host.find("comfyui").unwrap();
    let req = prip_protocols::Request::post("/prompt", body.to_vec());
    let native = prip_protocols::comfyui::ComfyUi;
    let time = |f: &mut dyn FnMut()| {
        for _ in 0..50 {
            f();
        }
        let t = Instant::now();
        for _ in 0..ADAPTER_CALLS {
            f();
        }
        t.elapsed() / ADAPTER_CALLS as u32
    };
    let wasm_call = time(&mut || {
        host.extract(idx, &req).unwrap();
    });
    let native_call = time(&mut || {
        native.extract(&req).unwrap();
    });
    println!("adapter call (comfyui extract of the recorded /prompt body, {ADAPTER_CALLS} calls):");
    println!(
        "  native               {:>9.1} us/call",
        micros(native_call)
    );
    println!(
        "  WASM, fresh store    {:>9.1} us/call, ratio {:.1}x",
        micros(wasm_call),
        micros(wasm_call) / micros(native_call)
    );
    println!(
        "  compiling the 4 built-in adapters at start-up: {:.0} ms",
        load.as_secs_f64() * 1e3
    );
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
