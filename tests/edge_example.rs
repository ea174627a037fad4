//! config/edge.yaml as shipped, with its addresses, certificate, poster and
//! cache directories moved to what the test made: :80 redirects to :443, :443
//! serves posters from disk and proxies the rest to two replicas over h2 or h1,
//! answering what the app marks cacheable from its cache.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_example_works_as_documented() {
    let dir = temp_dir("edge-example");
    let (cert_path, key_path, cert_pem) =
        common::tls::self_signed_files(&dir, "site", &["shop.test"]);
    let posters = dir.join("share");
    std::fs::create_dir_all(posters.join("poster")).unwrap();
    let poster: Vec<u8> = (0..5000u32).map(|i| (i % 256) as u8).collect();
    std::fs::write(posters.join("poster/film.jpg"), &poster).unwrap();

    let replicas = [Backend::start("app-1"), Backend::start("app-2")];
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/edge.yaml"))
        .unwrap()
        .replace("0.0.0.0:80\n", "127.0.0.1:0\n")
        .replace("0.0.0.0:443\n", "127.0.0.1:0\n")
        .replace("127.0.0.1:9091", "127.0.0.1:0")
        .replace(
            "/etc/tollgate/tls/site.crt",
            &cert_path.display().to_string(),
        )
        .replace(
            "/etc/tollgate/tls/site.key",
            &key_path.display().to_string(),
        )
        .replace("/usr/share/tollgate", &posters.display().to_string())
        .replace(
            "/var/cache/tollgate",
            &dir.join("cache").display().to_string(),
        )
        .replace(
            "/var/log/tollgate/access.log",
            &dir.join("access.log").display().to_string(),
        )
        .replace("127.0.0.1:9001", &replicas[0].addr.to_string())
        .replace("127.0.0.1:9002", &replicas[1].addr.to_string());
    let tollgate = Tollgate::launch_reported(dir, &text, &[]).await;
    let (http, https) = (tollgate.addr, tollgate.reported("server.listeners[1]"));
    // The TLS listener belongs to another service than the one the harness waits on.
    tollgate.wait_listening(https).await;

    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirect = plain
        .get(format!("http://{http}/poster/film.jpg?v=2"))
        .header("Host", "shop.test")
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 308);
    assert_eq!(
        redirect.headers()["location"],
        format!("https://shop.test:{}/poster/film.jpg?v=2", https.port()).as_str()
    );

    let client = reqwest::Client::builder()
        .resolve("shop.test", https)
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let base = format!("https://shop.test:{}", https.port());
    let film = client
        .get(format!("{base}/poster/film.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(film.status(), 200);
    assert_eq!(film.version(), reqwest::Version::HTTP_2);
    assert!(film.headers().contains_key("strict-transport-security"));
    assert_eq!(film.bytes().await.unwrap().as_ref(), poster.as_slice());

    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        let answer = client.get(format!("{base}/cart")).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        seen.insert(answer.headers()["x-backend"].to_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), 2, "both replicas answer: {seen:?}");

    // What the app marks cacheable is answered from the cache.
    let catalog = format!("{base}/catalog?max_age=60");
    let first = client.get(&catalog).send().await.unwrap();
    assert_eq!(first.headers()["x-cache-status"], "MISS");
    let stored = first.text().await.unwrap();
    for _ in 0..3 {
        let again = client.get(&catalog).send().await.unwrap();
        assert_eq!(again.headers()["x-cache-status"], "HIT");
        assert_eq!(again.text().await.unwrap(), stored);
    }
    let cart = client.get(format!("{base}/cart")).send().await.unwrap();
    assert_eq!(
        cart.headers()["x-cache-status"],
        "MISS",
        "nothing said: not stored"
    );
}
