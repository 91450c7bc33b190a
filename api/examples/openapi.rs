//! Prints the OpenAPI 3.1 document of `ferry-api`, as `GET /openapi.json`
//! answers it, so that CI can validate it without starting a server:
//! `cargo run -q -p ferry-api --example openapi > target/openapi.json`.

fn main() {
    println!("{}", ferry_api::openapi::json());
}
