//! `jwt_verify`: what a JWT costs lb per request, by algorithm: the signature check of a
//! token never seen before (every token distinct, so the verified-token cache misses), and
//! the same token again (a cache hit: what steady traffic from one client pays). Tokens are
//! minted here with the keys in tests/fixtures/jwt; the provider reads its keys from a JWKS
//! file, as `jwks_file` does.
//!
//! `cargo bench -p lb-benches --bench jwt_verify`
use std::{path::Path, time::Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const TOKENS: usize = 2000;

fn main() -> anyhow::Result<()> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/jwt");
    let public: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures.join("public.json"))?)?;
    let keys: Vec<_> = ["rsa1", "ec1", "ed1"]
        .iter()
        .map(|k| {
            let mut key = public[k].clone();
            key["kid"] = json!(k);
            key
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("lb-jwt-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, json!({ "keys": keys }).to_string())?;
    let text = format!(
        "[[jwt_provider]]\nname = \"b\"\nissuer = \"bench\"\njwks_file = \"{}\"\n",
        jwks.display()
    );
    let config = lb::config::L7Config::parse(&text, Path::new("bench.toml"))?;
    let _ = std::fs::remove_dir_all(&dir);
    let provider = lb::l7::jwt::JwtProvider::new(config.jwt_providers[0].clone(), None);
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    println!("| algorithm | uncached verify (us) | cached verify (us) |");
    println!("| --- | ---: | ---: |");
    for (name, alg, key) in [
        ("RS256", Algorithm::RS256, "rsa1"),
        ("PS256", Algorithm::PS256, "rsa1"),
        ("ES256", Algorithm::ES256, "ec1"),
        ("EdDSA", Algorithm::EdDSA, "ed1"),
    ] {
        let pem = std::fs::read(fixtures.join(format!("{key}.pem")))?;
        let signing = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem)?,
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem)?,
            _ => EncodingKey::from_rsa_pem(&pem)?,
        };
        let mut header = Header::new(alg);
        header.kid = Some(key.to_owned());
        let tokens = (0..TOKENS)
            .map(|n| {
                let claims = json!({ "iss": "bench", "sub": format!("user-{n}"), "exp": exp });
                jsonwebtoken::encode(&header, &claims, &signing)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let uncached = runtime.block_on(async {
            let start = Instant::now();
            for token in &tokens {
                provider.verify(token).await.map_err(anyhow::Error::from)?;
            }
            anyhow::Ok(start.elapsed())
        })?;
        let cached = runtime.block_on(async {
            let start = Instant::now();
            for _ in 0..TOKENS {
                provider
                    .verify(&tokens[0])
                    .await
                    .map_err(anyhow::Error::from)?;
            }
            anyhow::Ok(start.elapsed())
        })?;
        println!(
            "| {name} | {:.1} | {:.2} |",
            uncached.as_secs_f64() * 1e6 / TOKENS as f64,
            cached.as_secs_f64() * 1e6 / TOKENS as f64
        );
    }
    Ok(())
}
