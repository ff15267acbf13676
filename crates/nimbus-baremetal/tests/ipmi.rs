//! The IPMI driver (`ipmitool -I lanplus -C 3`) against OpenIPMI's `ipmi_sim`, whose chassis
//! control script records what the "hardware" was told.

use std::time::Duration;

use nimbus_baremetal::{
    BmcConfig, BmcKind, BootTarget, Error, PowerAction, PowerState, connect, power_and_wait,
};
use nimbus_testkit::ipmi_sim::IpmiSim;
use nimbus_types::Secret;

const USER: &str = "nimbus";
const PASSWORD: &str = "ipmi-pass-1";

fn config(port: u16, password: &str) -> BmcConfig {
    BmcConfig {
        kind: BmcKind::Ipmi,
        address: "127.0.0.1".into(),
        port: Some(port),
        username: USER.into(),
        password: Secret::new(password),
        system_id: None,
        timeout_secs: Some(4),
        insecure_tls: false,
    }
}

#[tokio::test]
async fn power_and_boot_device_reach_the_chassis() {
    let sim = IpmiSim::start(USER, PASSWORD).expect("ipmi_sim");
    let bmc = connect(&config(sim.port(), PASSWORD)).unwrap();
    assert_eq!(
        bmc.power_state().await.unwrap(),
        PowerState::Off,
        "{}",
        sim.log()
    );

    bmc.boot_once(BootTarget::Pxe).await.unwrap();
    assert_eq!(sim.boot().as_deref(), Some("pxe"), "calls: {}", sim.calls());

    power_and_wait(
        &*bmc,
        PowerAction::On,
        Duration::from_secs(20),
        Duration::from_millis(200),
    )
    .await
    .unwrap();
    assert_eq!(sim.power(), "on");
    assert!(sim.calls().contains("set power 1"), "{}", sim.calls());

    power_and_wait(
        &*bmc,
        PowerAction::Reset,
        Duration::from_secs(20),
        Duration::from_millis(200),
    )
    .await
    .unwrap();
    assert!(sim.calls().contains("set reset 1"), "{}", sim.calls());

    bmc.boot_once(BootTarget::Disk).await.unwrap();
    assert_eq!(
        sim.boot().as_deref(),
        Some("default"),
        "ipmi_sim records a disk boot as its default device"
    );

    power_and_wait(
        &*bmc,
        PowerAction::Off,
        Duration::from_secs(20),
        Duration::from_millis(200),
    )
    .await
    .unwrap();
    assert_eq!(sim.power(), "off");

    // Reset of a machine that is off powers it on rather than failing.
    bmc.power(PowerAction::Reset).await.unwrap();
    assert_eq!(sim.power(), "on");

    let err = bmc
        .insert_media("http://127.0.0.1/x.iso")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
}

#[tokio::test]
async fn wrong_credentials_are_unauthorized_and_never_on_a_command_line() {
    let sim = IpmiSim::start(USER, PASSWORD).expect("ipmi_sim");
    let bmc = connect(&config(sim.port(), "wrong-pass-9")).unwrap();
    let err = bmc.power_state().await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
    assert!(!err.to_string().contains("wrong-pass-9"));

    let bmc = connect(&BmcConfig {
        username: "nobody".into(),
        ..config(sim.port(), PASSWORD)
    })
    .unwrap();
    let err = bmc.power_state().await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
    assert_eq!(sim.power(), "off");
    assert!(!sim.calls().contains("set"), "{}", sim.calls());
}

#[tokio::test]
async fn a_bmc_that_does_not_answer_is_unreachable_within_the_timeout() {
    // A UDP port nobody listens on.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bmc = connect(&BmcConfig {
        timeout_secs: Some(2),
        ..config(port, PASSWORD)
    })
    .unwrap();
    let started = std::time::Instant::now();
    let err = bmc.power_state().await.unwrap_err();
    assert!(
        matches!(err, Error::Unreachable { .. }) && err.is_retryable(),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}
