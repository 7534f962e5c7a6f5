//! The OpenID Provider fixture itself: discovery, JWT and opaque client_credentials tokens,
//! introspection, key rotation, stop and restart.

use std::time::Duration;

use gatehouse_testkit::oidc::{OidcError, OidcOptions, OidcProvider, TEST_CLIENT_ID, jwt_claims, jwt_header};

const RESOURCE: &str = "https://api.gatehouse.test";

fn kids(jwks: &serde_json::Value) -> Vec<String> {
    jwks["keys"].as_array().expect("jwks keys").iter().filter_map(|k| k["kid"].as_str().map(str::to_string)).collect()
}

fn kid(token: &str) -> String {
    jwt_header(token).expect("JWT header")["kid"].as_str().expect("kid").to_string()
}

#[tokio::test]
async fn issues_jwt_and_opaque_tokens_and_rotates_keys() {
    let mut idp = OidcProvider::start().await.expect("start OIDC provider");

    let discovery = idp.discovery().await.expect("discovery");
    assert_eq!(discovery["issuer"], idp.issuer());
    assert_eq!(discovery["jwks_uri"], idp.jwks_uri());
    assert_eq!(discovery["introspection_endpoint"], idp.introspection_endpoint());

    // With a resource indicator: a JWT for that audience, signed by a published key.
    let jwt = idp.client_credentials_token("read write", Some(RESOURCE)).await.expect("JWT token");
    assert_eq!(jwt.split('.').count(), 3, "{jwt}");
    let header = jwt_header(&jwt).expect("header");
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["typ"], "at+jwt");
    let first_kid = kid(&jwt);
    assert_eq!(kids(&idp.jwks().await.expect("jwks")), vec![first_kid.clone()]);
    let claims = jwt_claims(&jwt).expect("claims");
    assert_eq!(claims["iss"], idp.issuer());
    assert_eq!(claims["aud"], RESOURCE);
    assert_eq!(claims["client_id"], TEST_CLIENT_ID);
    assert_eq!(claims["sub"], TEST_CLIENT_ID);
    assert_eq!(claims["scope"], "read write");
    assert!(claims["jti"].is_string(), "{claims}");
    let lifetime = claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat");
    assert_eq!(lifetime, 300);

    // Without one: an opaque token that introspection reads.
    let opaque = idp.client_credentials_token("read", None).await.expect("opaque token");
    assert!(!opaque.contains('.'), "{opaque}");
    let answer = idp.introspect(&opaque).await.expect("introspect");
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["scope"], "read");
    assert_eq!(answer["client_id"], TEST_CLIENT_ID);
    assert_eq!(answer["sub"], TEST_CLIENT_ID);
    assert!(answer["exp"].as_u64().is_some(), "{answer}");
    assert_eq!(idp.introspect("not-a-token").await.expect("introspect")["active"], false);

    let wrong_secret = idp.client_credentials_token_for(TEST_CLIENT_ID, "wrong", "read", None).await;
    assert!(matches!(wrong_secret, Err(OidcError::Rejected { status: 401, .. })), "{wrong_secret:?}");

    // Rotation: the new key signs, the old one stays published, opaque tokens stay valid.
    let new_kid = idp.rotate_keys(false).await.expect("rotate");
    assert_ne!(new_kid, first_kid);
    assert_eq!(kids(&idp.jwks().await.expect("jwks")), vec![new_kid.clone(), first_kid.clone()]);
    let jwt = idp.client_credentials_token("read", Some(RESOURCE)).await.expect("JWT after rotation");
    assert_eq!(kid(&jwt), new_kid);
    assert_eq!(idp.introspect(&opaque).await.expect("introspect")["active"], true);

    let only_kid = idp.rotate_keys(true).await.expect("rotate, dropping old keys");
    assert_eq!(kids(&idp.jwks().await.expect("jwks")), vec![only_kid]);

    // Down: the port refuses and calls say so.
    idp.stop();
    assert!(std::net::TcpStream::connect(("127.0.0.1", idp.port())).is_err(), "port {} still open", idp.port());
    let down = idp.client_credentials_token("read", None).await;
    assert!(matches!(down, Err(OidcError::Unreachable(_))), "{down:?}");
}

#[tokio::test]
async fn restarts_on_the_same_port_with_the_same_keys() {
    let options = OidcOptions { access_token_ttl: Some(Duration::from_secs(60)), ..OidcOptions::default() };
    let mut idp = OidcProvider::start_with(options).await.expect("start OIDC provider");
    let jwt = idp.client_credentials_token("admin", Some(RESOURCE)).await.expect("JWT token");
    let claims = jwt_claims(&jwt).expect("claims");
    assert_eq!(claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat"), 60);
    let opaque = idp.client_credentials_token("read", None).await.expect("opaque token");
    let (port, issuer, jwks) = (idp.port(), idp.issuer(), idp.jwks().await.expect("jwks"));

    idp.stop();
    idp.restart().await.expect("restart");
    assert_eq!(idp.port(), port);
    assert_eq!(idp.discovery().await.expect("discovery")["issuer"], issuer);
    assert_eq!(idp.jwks().await.expect("jwks"), jwks);
    assert_eq!(kid(&idp.client_credentials_token("read", Some(RESOURCE)).await.expect("JWT")), kid(&jwt));
    // Provider state is in memory: tokens issued before the restart are gone.
    assert_eq!(idp.introspect(&opaque).await.expect("introspect")["active"], false);
}
