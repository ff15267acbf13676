//! What machines cost: a price per provider type and instance type, and how each provider bills
//! (per second with a minimum, per started hour, or a dedicated host's 24-hour minimum).
//!
//! The defaults are the on-demand list prices of the types Nimbus provisions (USD, us-east-1 for
//! EC2; Hetzner's prices converted at par from EUR, excluding VAT); a deployment overrides them
//! in its configuration. Machines without a price (local and bring-your-own hosts) cost nothing.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ProviderType;

/// How a provider turns a machine's lifetime into a bill.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Billing {
    /// Per second from launch to termination, at least `minimum_secs` (EC2 Linux: 60 s).
    PerSecond { minimum_secs: u64 },
    /// Per started hour (Hetzner Cloud).
    Hourly,
    /// A dedicated host billed per second from allocation, at least `minimum_hours` (EC2 Mac:
    /// 24 h). Nimbus records instances, not hosts, so a host reused by several instances is
    /// counted once per instance here: an upper bound.
    DedicatedHost { minimum_hours: u64 },
}

/// The price of one instance type of one provider type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub provider_type: ProviderType,
    pub instance_type: String,
    pub usd_per_hour: f64,
    pub billing: Billing,
}

/// Prices by provider type and instance type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PriceTable {
    prices: Vec<Price>,
}

fn price(
    provider_type: ProviderType,
    instance_type: &str,
    usd_per_hour: f64,
    billing: Billing,
) -> Price {
    Price {
        provider_type,
        instance_type: instance_type.to_owned(),
        usd_per_hour,
        billing,
    }
}

impl Default for PriceTable {
    fn default() -> Self {
        use Billing::*;
        use ProviderType::{Aws, Hetzner};
        let second = PerSecond { minimum_secs: 60 };
        let host = DedicatedHost { minimum_hours: 24 };
        PriceTable {
            prices: vec![
                price(Aws, "t3.medium", 0.0416, second),
                price(Aws, "t3.large", 0.0832, second),
                price(Aws, "c5.large", 0.085, second),
                price(Aws, "c5.xlarge", 0.17, second),
                price(Aws, "c5.2xlarge", 0.34, second),
                price(Aws, "c6i.xlarge", 0.17, second),
                price(Aws, "c7g.xlarge", 0.145, second),
                price(Aws, "m5.large", 0.096, second),
                price(Aws, "m5.xlarge", 0.192, second),
                price(Aws, "mac1.metal", 1.083, host),
                price(Aws, "mac2.metal", 0.65, host),
                price(Aws, "mac2-m2.metal", 0.878, host),
                price(Hetzner, "cx22", 0.0066, Hourly),
                price(Hetzner, "cx32", 0.0113, Hourly),
                price(Hetzner, "cx42", 0.0273, Hourly),
                price(Hetzner, "cpx31", 0.0238, Hourly),
                price(Hetzner, "cax21", 0.0104, Hourly),
                price(Hetzner, "ccx23", 0.0392, Hourly),
            ],
        }
    }
}

impl PriceTable {
    /// The defaults with `overrides` replacing (or adding) the prices they name.
    pub fn with_overrides(overrides: impl IntoIterator<Item = Price>) -> Self {
        let mut table = PriceTable::default();
        for entry in overrides {
            table.prices.retain(|p| {
                !(p.provider_type == entry.provider_type && p.instance_type == entry.instance_type)
            });
            table.prices.push(entry);
        }
        table
    }

    pub fn prices(&self) -> &[Price] {
        &self.prices
    }

    pub fn lookup(
        &self,
        provider_type: ProviderType,
        instance_type: Option<&str>,
    ) -> Option<&Price> {
        let instance_type = instance_type?;
        self.prices
            .iter()
            .find(|p| p.provider_type == provider_type && p.instance_type == instance_type)
    }
}

impl Price {
    /// What a machine that started at `started` and ended at `ended` (or is still running at
    /// `now`) costs, counting only the part from `from` on (the start of a reporting window;
    /// minimums count in the window the machine started in).
    pub fn cost(
        &self,
        started: OffsetDateTime,
        ended: Option<OffsetDateTime>,
        from: OffsetDateTime,
        now: OffsetDateTime,
    ) -> f64 {
        let end = ended.unwrap_or(now).min(now);
        let lived = (end - started).as_seconds_f64().max(0.0);
        let billed = match self.billing {
            Billing::PerSecond { minimum_secs } => lived.max(minimum_secs as f64),
            Billing::Hourly => (lived / 3600.0).ceil().max(1.0) * 3600.0,
            Billing::DedicatedHost { minimum_hours } => lived.max(minimum_hours as f64 * 3600.0),
        };
        // Billing ends when the billed period does (a minimum may run past `end`), and never
        // later than now.
        let billed_end = (started + time::Duration::seconds_f64(billed)).min(now.max(end));
        let counted = (billed_end - started.max(from)).as_seconds_f64().max(0.0);
        counted / 3600.0 * self.usd_per_hour
    }

    /// The hours a machine is billed for in the window, as `cost` counts them.
    pub fn hours(
        &self,
        started: OffsetDateTime,
        ended: Option<OffsetDateTime>,
        from: OffsetDateTime,
        now: OffsetDateTime,
    ) -> f64 {
        if self.usd_per_hour > 0.0 {
            self.cost(started, ended, from, now) / self.usd_per_hour
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + seconds).unwrap()
    }

    #[test]
    fn billing_rules() {
        let table = PriceTable::default();
        let linux = table.lookup(ProviderType::Aws, Some("c5.xlarge")).unwrap();
        // 30 s billed as the 60 s minimum.
        let cost = linux.cost(at(0), Some(at(30)), at(0), at(1000));
        assert!((cost - 0.17 / 60.0).abs() < 1e-9, "{cost}");
        // Two hours exactly.
        let cost = linux.cost(at(0), Some(at(7200)), at(0), at(9000));
        assert!((cost - 0.34).abs() < 1e-9, "{cost}");
        // Still running: billed up to now.
        let cost = linux.cost(at(0), None, at(0), at(3600));
        assert!((cost - 0.17).abs() < 1e-9, "{cost}");

        let hetzner = table.lookup(ProviderType::Hetzner, Some("cx22")).unwrap();
        // Ten minutes is a started hour.
        let cost = hetzner.cost(at(0), Some(at(600)), at(0), at(7200));
        assert!((cost - 0.0066).abs() < 1e-9, "{cost}");

        let mac = table.lookup(ProviderType::Aws, Some("mac2.metal")).unwrap();
        // One hour of use is a day's bill, once the day is over...
        let cost = mac.cost(at(0), Some(at(3600)), at(0), at(48 * 3600));
        assert!((cost - 24.0 * 0.65).abs() < 1e-9, "{cost}");
        // ...and only what has accrued so far before that.
        let cost = mac.cost(at(0), Some(at(3600)), at(0), at(2 * 3600));
        assert!((cost - 2.0 * 0.65).abs() < 1e-9, "{cost}");
        // A window starting later counts only its part.
        let cost = linux.cost(at(0), Some(at(7200)), at(3600), at(9000));
        assert!((cost - 0.17).abs() < 1e-9, "{cost}");

        assert!(
            table
                .lookup(ProviderType::Local, Some("c5.xlarge"))
                .is_none()
        );
        assert!(table.lookup(ProviderType::Aws, None).is_none());
    }

    #[test]
    fn overrides_replace_and_add() {
        let table = PriceTable::with_overrides([
            price(
                ProviderType::Aws,
                "c5.xlarge",
                0.1,
                Billing::PerSecond { minimum_secs: 60 },
            ),
            price(ProviderType::Ssh, "rack-a", 0.05, Billing::Hourly),
        ]);
        assert_eq!(
            table
                .lookup(ProviderType::Aws, Some("c5.xlarge"))
                .unwrap()
                .usd_per_hour,
            0.1
        );
        assert_eq!(
            table
                .lookup(ProviderType::Ssh, Some("rack-a"))
                .unwrap()
                .usd_per_hour,
            0.05
        );
        let xlarge = table
            .prices()
            .iter()
            .filter(|p| p.instance_type == "c5.xlarge")
            .count();
        assert_eq!(xlarge, 1);
    }
}
