//! Runs the driver conformance suite (`oslo_core::conformance`) against `fake://` always and
//! against every broker whose URL variable is set. Each case is reported on its own line as
//! `<driver>::<case>`; a case the driver lacks the capability for is reported as ignored.

use libtest_mimic::{Arguments, Trial};
use oslo_core::conformance;
use oslo_messaging::{get_transport, Transport};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn trials_for(driver: &'static str, make_url: impl Fn(&str) -> String + Clone + Send + 'static) -> Vec<Trial> {
    trials_of(driver, conformance::cases(), make_url)
}

fn trials_of(
    driver: &'static str,
    cases: Vec<conformance::Case>,
    make_url: impl Fn(&str) -> String + Clone + Send + 'static,
) -> Vec<Trial> {
    // Ask the driver for its capabilities once, to decide what to skip.
    let capabilities = match get_transport(&make_url("capabilities")) {
        Ok(transport) => Some(transport.capabilities()),
        Err(err) => {
            return vec![Trial::test(format!("{driver}::get_transport"), move || {
                Err(format!("cannot build the transport: {err}").into())
            })];
        }
    };
    cases
        .into_iter()
        .map(|case| {
            let name = format!("{driver}::{}", case.name);
            let skip = capabilities.as_ref().and_then(|c| case.skip_reason(c));
            let make_url = make_url.clone();
            let trial = Trial::test(name, move || {
                let rt = runtime();
                rt.block_on(async {
                    let transport: Transport = get_transport(&make_url(case.name)).map_err(|e| e.to_string())?;
                    (case.run)(transport.clone()).await;
                    transport.cleanup().await;
                    Ok::<_, String>(())
                })?;
                Ok(())
            });
            match skip {
                Some(reason) => trial.with_ignored_flag(true).with_kind(reason),
                None => trial,
            }
        })
        .collect()
}

fn main() {
    let args = Arguments::from_args();
    // Each case gets its own in-memory bus.
    let mut trials = trials_for("fake", |case| format!("fake://conformance-{case}"));
    // The robustness group wraps fake:// in the fault-injection driver (`fault::<case>`).
    trials.extend(trials_of("fault", conformance::robustness_cases(), |case| {
        format!("fake://conformance-fault-{case}")
    }));
    for (driver, variable) in oslo_tests::BROKERS {
        match oslo_tests::broker_url(driver, variable) {
            Some(url) => trials.extend(trials_for(driver, move |_| url.clone())),
            None => trials.push(Trial::test(format!("{driver}::suite ({variable} not set)"), || Ok(())).with_ignored_flag(true)),
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    // oslo leaves topic and notification queues behind by design; ours are randomly named.
    if let Ok(url) = std::env::var("OSLO_TEST_RABBIT_URL") {
        runtime().block_on(oslo_tests::purge_rabbit_queues(&url, &["conformance-"]));
    }
    // The AMQP 1.0 driver on RabbitMQ names the shared queues by oslo's legacy addresses.
    if let Ok(url) = std::env::var("OSLO_TEST_AMQP1_URL") {
        let prefixes = [
            "unicast.openstack.conformance-",
            "exclusive.openstack.conformance-",
            "unicast.conformance-",
            "exclusive.conformance-",
            // notification pool queues, named after the pool
            "conformance-",
        ];
        runtime().block_on(oslo_tests::purge_rabbit_queues(&url, &prefixes));
    }
    conclusion.exit();
}
