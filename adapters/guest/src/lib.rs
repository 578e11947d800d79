//! One protocol of prip-protocols exported as a component of `adapters/wit`.
//!
//! prip-proxy's build script compiles this crate for wasm32 once per protocol
//! feature and turns each module into a component; the `faulty` feature, a
//! misbehaving adapter for the sandbox tests, is built by prip-test-support instead.
//! Built natively (as the workspace does for tests and lints) it only type-checks the
//! bindings and runs the faulty adapter's own test.

// The generated canonical-ABI shims take one argument per flattened record field.
#![allow(clippy::too_many_arguments)]

/// What wit-bindgen generates from adapters/wit: the WIT types, the `Guest` trait and
/// the `export!` macro. Its canonical-ABI glue is unsafe code (raw pointers into linear
/// memory, exported symbols, a link section), allowed here and in the module that
/// `export_protocol!` writes, nowhere else.
#[allow(unsafe_code)]
mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "adapter",
        default_bindings_module: "crate::bindings",
    });
}

use bindings::prip::adapter::types as wit;

// The sandbox tests' misbehaving adapter: built only with its feature (by
// prip-test-support), and natively for this crate's own test.
#[cfg(any(feature = "faulty", test))]
mod faulty;

/// Converts between the WIT types and prip-protocols' identical native ones.
#[allow(dead_code)]
mod convert {
    use super::wit;
    use prip_protocols as native;

    pub fn info(i: native::Info) -> wit::Info {
        wit::Info {
            name: i.name,
            version: i.version,
            routes: i
                .routes
                .into_iter()
                .map(|r| wit::Route {
                    method: r.method,
                    path: r.path,
                })
                .collect(),
            annotates: i.annotates,
            dialect: match i.dialect {
                native::Dialect::A1111 => wit::Dialect::A1111,
                native::Dialect::ComfyUi => wit::Dialect::Comfyui,
                native::Dialect::Plain => wit::Dialect::Plain,
            },
        }
    }

    pub fn extraction(e: native::Extraction) -> wit::Extraction {
        wit::Extraction {
            slots: e.slots.into_iter().map(slot).collect(),
            seed: e.seed,
            refined: e.refined,
        }
    }

    pub fn slot(s: native::Slot) -> wit::Slot {
        wit::Slot {
            id: s.id,
            text: s.text,
            polarity: match s.polarity {
                native::Polarity::Positive => wit::Polarity::Positive,
                native::Polarity::Negative => wit::Polarity::Negative,
                native::Polarity::Unknown => wit::Polarity::Unknown,
            },
            role: s.role,
            encoder: s.encoder,
        }
    }

    pub fn request(r: wit::Request) -> native::Request {
        native::Request {
            method: r.method,
            path: r.path,
            query: r.query,
            headers: r.headers,
            body: r.body,
        }
    }

    pub fn replacements(r: Vec<wit::Replacement>) -> Vec<native::Replacement> {
        r.into_iter()
            .map(|r| native::Replacement {
                id: r.id,
                original: r.original,
                text: r.text,
            })
            .collect()
    }

    pub fn response(r: wit::Response) -> native::Response {
        native::Response {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }
    }
}

/// Exports `$protocol` (a prip-protocols unit struct) as this component.
#[allow(unused_macros)]
macro_rules! export_protocol {
    ($protocol:expr) => {
        struct Component;

        impl bindings::Guest for Component {
            fn describe() -> wit::Info {
                convert::info(prip_protocols::Protocol::describe(&$protocol))
            }

            fn extract(req: wit::Request) -> Result<wit::Extraction, String> {
                prip_protocols::Protocol::extract(&$protocol, &convert::request(req))
                    .map(convert::extraction)
            }

            fn apply(
                req: wit::Request,
                replacements: Vec<wit::Replacement>,
            ) -> Result<Vec<u8>, String> {
                prip_protocols::Protocol::apply(
                    &$protocol,
                    &convert::request(req),
                    &convert::replacements(replacements),
                )
            }

            fn annotate(
                req: wit::Request,
                replacements: Vec<wit::Replacement>,
                resp: wit::Response,
            ) -> Result<Option<Vec<u8>>, String> {
                prip_protocols::Protocol::annotate(
                    &$protocol,
                    &convert::request(req),
                    &convert::replacements(replacements),
                    &convert::response(resp),
                )
            }
        }

        // The `unsafe extern "C"` entry points, exported by name, that wit-bindgen
        // writes for `Component`: the one place outside `bindings` with unsafe code.
        #[allow(unsafe_code)]
        mod entry_points {
            use super::Component;
            crate::bindings::export!(Component);
        }
    };
}

#[cfg(feature = "a1111")]
export_protocol!(prip_protocols::a1111::A1111);
#[cfg(feature = "comfyui")]
export_protocol!(prip_protocols::comfyui::ComfyUi);
#[cfg(feature = "diffusers")]
export_protocol!(prip_protocols::diffusers::Diffusers);
#[cfg(feature = "openai-images")]
export_protocol!(prip_protocols::openai_images::OpenAiImages);
#[cfg(feature = "faulty")]
export_protocol!(faulty::Faulty);
