//! Public-key tokens: RS256 and ES256 keys from PEM files, picked by `kid`, and the attacks on
//! them (algorithm confusion, a signature under another key's id).

use std::time::Duration;

use chat_gateway::auth::{AuthError, JwksFile, KeySpec, Verifier};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}/{name}")).expect("the test key exists")
}

fn verifier() -> Verifier {
    let keys = vec![
        KeySpec::parse_public(&format!("rsa-1=RS256:{DIR}/rs256-public.pem")).unwrap(),
        KeySpec::parse_public(&format!("ec-1=ES256:{DIR}/es256-public.pem")).unwrap(),
    ];
    Verifier::new(
        keys,
        Duration::from_secs(5),
        Some("issuer".into()),
        Some("chat".into()),
    )
}

fn claims() -> serde_json::Value {
    let now = jsonwebtoken::get_current_timestamp();
    json!({"sub": "s", "externalUserId": "ext-7", "iss": "issuer", "aud": "chat", "exp": now + 60})
}

fn header(algorithm: Algorithm, kid: &str) -> Header {
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.to_owned());
    header
}

#[test]
fn rs256_and_es256_tokens_verify_with_their_public_keys() {
    let rsa = EncodingKey::from_rsa_pem(&pem("rs256-private.pem")).unwrap();
    let ec = EncodingKey::from_ec_pem(&pem("es256-private.pem")).unwrap();
    let v = verifier();
    let token = jsonwebtoken::encode(&header(Algorithm::RS256, "rsa-1"), &claims(), &rsa).unwrap();
    assert_eq!(&*v.verify(&token).unwrap().user_id, "ext-7");
    let token = jsonwebtoken::encode(&header(Algorithm::ES256, "ec-1"), &claims(), &ec).unwrap();
    assert_eq!(&*v.verify(&token).unwrap().user_id, "ext-7");

    // A valid signature under the wrong kid, or a kid nobody has.
    let token = jsonwebtoken::encode(&header(Algorithm::ES256, "rsa-1"), &claims(), &ec).unwrap();
    assert_eq!(v.verify(&token), Err(AuthError::Invalid));
    let token = jsonwebtoken::encode(&header(Algorithm::ES256, "ec-9"), &claims(), &ec).unwrap();
    assert_eq!(v.verify(&token), Err(AuthError::UnknownKey));
}

#[test]
fn the_public_key_as_an_hmac_secret_is_refused() {
    // The classic confusion: sign HS256 with the server's public key, hoping it is used as a
    // secret. The key is RS256 only.
    let public = EncodingKey::from_secret(&pem("rs256-public.pem"));
    let token =
        jsonwebtoken::encode(&header(Algorithm::HS256, "rsa-1"), &claims(), &public).unwrap();
    assert_eq!(verifier().verify(&token), Err(AuthError::Invalid));
}

#[test]
fn jwks_keys_rotate_by_kid_as_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let full: serde_json::Value =
        serde_json::from_slice(&pem("jwks.json")).expect("the test JWKS is JSON");
    let with = |kids: &[&str]| {
        let keys: Vec<_> = full["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| kids.contains(&k["kid"].as_str().unwrap()))
            .cloned()
            .collect();
        std::fs::write(&path, json!({ "keys": keys }).to_string()).unwrap();
    };
    with(&["rsa-2", "secret-in-a-public-set"]);
    let jwks = JwksFile::load(path.clone(), Duration::ZERO).unwrap();
    let v = Verifier::new(Vec::new(), Duration::from_secs(5), None, None).with_jwks(jwks);
    let rsa = EncodingKey::from_rsa_pem(&pem("rs256-private.pem")).unwrap();
    let ec = EncodingKey::from_ec_pem(&pem("es256-private.pem")).unwrap();
    let rsa_token =
        jsonwebtoken::encode(&header(Algorithm::RS256, "rsa-2"), &claims(), &rsa).unwrap();
    let ec_token = jsonwebtoken::encode(&header(Algorithm::ES256, "ec-2"), &claims(), &ec).unwrap();
    assert_eq!(&*v.verify(&rsa_token).unwrap().user_id, "ext-7");
    assert_eq!(v.verify(&ec_token), Err(AuthError::UnknownKey));
    // A symmetric key in a public set is never used: a token signed with it is refused.
    let hs = EncodingKey::from_secret(b"secret");
    let hs_token = jsonwebtoken::encode(
        &header(Algorithm::HS256, "secret-in-a-public-set"),
        &claims(),
        &hs,
    )
    .unwrap();
    assert_eq!(v.verify(&hs_token), Err(AuthError::UnknownKey));

    // The new key is published: used at once. The old one is withdrawn: refused.
    with(&["rsa-2", "ec-2"]);
    assert_eq!(&*v.verify(&ec_token).unwrap().user_id, "ext-7");
    with(&["ec-2"]);
    assert_eq!(v.verify(&rsa_token), Err(AuthError::UnknownKey));
    // A broken file keeps the keys in force.
    std::fs::write(&path, "{ half written").unwrap();
    assert_eq!(&*v.verify(&ec_token).unwrap().user_id, "ext-7");
    assert!(JwksFile::load(path, Duration::ZERO).is_err());
}
