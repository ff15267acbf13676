//! The Redfish driver against sushy-tools (`sushy-emulator --fake`, a real Redfish service whose
//! power changes land 1–11 s after a reset), and against a canned responder for what sushy will
//! not do on demand: answer malformed JSON, never answer, or link to another host.

mod support;

use std::time::{Duration, Instant};

use nimbus_baremetal::redfish::Redfish;
use nimbus_baremetal::{
    Bmc, BmcConfig, BmcKind, BootTarget, Error, PowerAction, PowerState, power_and_wait,
};
use nimbus_testkit::sushy::{FakeSystem, Sushy, SushyOptions};
use nimbus_types::Secret;

const USER: &str = "nimbus";
const PASSWORD: &str = "bmc-pass-1";

fn slow() -> bool {
    if std::env::var_os("NIMBUS_SLOW_TESTS").is_none() {
        eprintln!(
            "skipped: set NIMBUS_SLOW_TESTS=1 (scripts/test does) to run against sushy-tools"
        );
        return false;
    }
    true
}

fn config(address: &str, password: &str) -> BmcConfig {
    BmcConfig {
        kind: BmcKind::Redfish,
        address: address.to_owned(),
        port: None,
        username: USER.to_owned(),
        password: Secret::new(password),
        system_id: None,
        timeout_secs: Some(5),
        insecure_tls: false,
    }
}

fn start(systems: Vec<FakeSystem>) -> Sushy {
    Sushy::start(SushyOptions {
        systems,
        auth: Some((USER.into(), PASSWORD.into())),
    })
    .expect("sushy-emulator")
}

#[tokio::test]
async fn power_boot_override_and_virtual_media_against_sushy() {
    if !slow() {
        return;
    }
    let sushy = start(vec![FakeSystem::off("node-a", 1)]);
    let bmc = Redfish::new(&config(&sushy.url(), PASSWORD)).unwrap();
    assert_eq!(
        bmc.power_state().await.unwrap(),
        PowerState::Off,
        "{}",
        sushy.log()
    );

    bmc.boot_once(BootTarget::Pxe).await.unwrap();
    let (target, enabled) = bmc.boot_override().await.unwrap();
    assert_eq!(target, "Pxe");
    // The driver asks for "Once"; sushy's fake driver ignores BootSourceOverrideEnabled and
    // always reports "Continuous" (a note in its source says so).
    assert_eq!(enabled, "Continuous");
    bmc.boot_once(BootTarget::Disk).await.unwrap();
    assert_eq!(bmc.boot_override().await.unwrap().0, "Hdd");

    // A deadline shorter than sushy's 1–11 s: the change is asked for, the wait gives up.
    let err = power_and_wait(
        &bmc,
        PowerAction::On,
        Duration::ZERO,
        Duration::from_millis(100),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::PowerTimeout {
                wanted: PowerState::On,
                ..
            }
        ) && err.is_retryable(),
        "{err}"
    );

    let started = Instant::now();
    power_and_wait(
        &bmc,
        PowerAction::On,
        Duration::from_secs(30),
        Duration::from_millis(250),
    )
    .await
    .unwrap();
    eprintln!("power on landed after {:?}", started.elapsed());
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::On);
    // Asking again is a no-op, not an error.
    bmc.power(PowerAction::On).await.unwrap();

    let started = Instant::now();
    power_and_wait(
        &bmc,
        PowerAction::Reset,
        Duration::from_secs(30),
        Duration::from_millis(250),
    )
    .await
    .unwrap();
    eprintln!("reset came back on after {:?}", started.elapsed());

    // Virtual media: sushy downloads the image from the URL it is given.
    let image = support::serve(200, Some("not really an ISO"));
    let url = format!("http://127.0.0.1:{}/installer.iso", image.port);
    bmc.eject_media().await.unwrap(); // empty drive: fine
    bmc.insert_media(&url).await.unwrap();
    assert_eq!(
        bmc.media_status().await.unwrap(),
        (Some(url.clone()), true),
        "{}",
        sushy.log()
    );
    assert!(image.requests.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    bmc.eject_media().await.unwrap();
    assert!(!bmc.media_status().await.unwrap().1);
    let err = bmc.insert_media("ftp://127.0.0.1/x.iso").await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { field, .. } if field == "image_url"),
        "{err}"
    );

    power_and_wait(
        &bmc,
        PowerAction::Off,
        Duration::from_secs(30),
        Duration::from_millis(250),
    )
    .await
    .unwrap();
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
}

#[tokio::test]
async fn wrong_password_is_unauthorized_and_never_echoed() {
    if !slow() {
        return;
    }
    let sushy = start(vec![FakeSystem::off("node-a", 1)]);
    let bmc = nimbus_baremetal::connect(&config(&sushy.url(), "wrong-pass-9")).unwrap();
    let err = bmc.power_state().await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(!err.to_string().contains("wrong-pass-9"), "{err}");
    assert!(!format!("{err:?}").contains("wrong-pass-9"), "{err:?}");
}

#[tokio::test]
async fn several_systems_need_a_system_id() {
    if !slow() {
        return;
    }
    let a = FakeSystem::off("node-a", 1);
    let b = FakeSystem::off("node-b", 2);
    let sushy = start(vec![a.clone(), b.clone()]);
    let err = Redfish::new(&config(&sushy.url(), PASSWORD))
        .unwrap()
        .power_state()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { field, message } if field == "system_id" && message.contains(&a.uuid) && message.contains(&b.uuid)),
        "{err}"
    );
    let chosen = Redfish::new(&BmcConfig {
        system_id: Some(b.uuid.clone()),
        ..config(&sushy.url(), PASSWORD)
    })
    .unwrap();
    chosen.boot_once(BootTarget::Pxe).await.unwrap();
    assert_eq!(chosen.boot_override().await.unwrap().0, "Pxe");
    let other = Redfish::new(&BmcConfig {
        system_id: Some(a.uuid.clone()),
        ..config(&sushy.url(), PASSWORD)
    })
    .unwrap();
    assert_eq!(
        other.boot_override().await.unwrap().0,
        "Hdd",
        "only node-b was changed"
    );
    let err = Redfish::new(&BmcConfig {
        system_id: Some("nope".into()),
        ..config(&sushy.url(), PASSWORD)
    })
    .unwrap()
    .power_state()
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { field, .. } if field == "system_id"),
        "{err}"
    );
}

#[tokio::test]
async fn a_bmc_that_never_answers_times_out() {
    let silent = support::serve(200, None);
    let bmc = Redfish::new(&BmcConfig {
        timeout_secs: Some(1),
        ..config(&format!("http://127.0.0.1:{}", silent.port), PASSWORD)
    })
    .unwrap();
    let started = Instant::now();
    let err = bmc.power_state().await.unwrap_err();
    assert!(
        matches!(err, Error::Unreachable { .. }) && err.is_retryable(),
        "{err}"
    );
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn malformed_json_and_foreign_links_are_refused() {
    let garbage = support::serve(200, Some("{\"Members\": [ not json"));
    let err = Redfish::new(&config(
        &format!("http://127.0.0.1:{}", garbage.port),
        PASSWORD,
    ))
    .unwrap()
    .power_state()
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::Malformed { message, .. } if message.contains("not JSON")),
        "{err}"
    );

    let wrong_shape = support::serve(200, Some("{\"Members\": 3}"));
    let err = Redfish::new(&config(
        &format!("http://127.0.0.1:{}", wrong_shape.port),
        PASSWORD,
    ))
    .unwrap()
    .power_state()
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Malformed { .. }), "{err}");

    let elsewhere = support::serve(
        200,
        Some("{\"Members\": [{\"@odata.id\": \"http://198.51.100.7/redfish/v1/Systems/1\"}]}"),
    );
    let err = Redfish::new(&config(
        &format!("http://127.0.0.1:{}", elsewhere.port),
        PASSWORD,
    ))
    .unwrap()
    .power_state()
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::Malformed { message, .. } if message.contains("leaves the BMC")),
        "{err}"
    );
    assert_eq!(
        elsewhere.requests.load(std::sync::atomic::Ordering::SeqCst),
        1
    );

    let refused = support::serve(
        400,
        Some("{\"error\": {\"code\": \"Base.1.0.GeneralError\", \"message\": \"no such thing\"}}"),
    );
    let err = Redfish::new(&config(
        &format!("http://127.0.0.1:{}", refused.port),
        PASSWORD,
    ))
    .unwrap()
    .power_state()
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::Refused { message, .. } if message.contains("no such thing")),
        "{err}"
    );
}
