//! Tests of the catalog, the recording functions and the process parser. The exposition is
//! also linted by the real `promtool` in the end-to-end test (tests/e2e/metrics.rs).

use super::pool::Metered;
use super::process::{parse_boot_time, parse_max_fds, parse_stat};
use super::*;

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn recording_moves_the_right_series() {
    let m = enable();
    reply_sent("mx", 250);
    reply_sent("mx", 250);
    reply_sent("mx", 550);
    tls_handshake("amtp", Ok(true), Duration::from_millis(3));
    tls_handshake("amtp", Err("alert"), Duration::ZERO);
    chain_cache(true);
    chain_cache(true);
    chain_cache(false);
    ticket_declined("chain");
    let meter = pool::Meter::new("worker", 0);
    meter.queued();
    meter.queued();
    {
        let _busy = meter.handled();
        std::thread::sleep(Duration::from_millis(2));
    }
    let text = m.render();
    assert_eq!(
        sample(&text, r#"amtp_replies_total{code="250",listener="mx"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"amtp_replies_total{code="550",listener="mx"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"amtp_tls_handshakes_total{listener="amtp",result="resumed"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"amtp_tls_handshakes_total{listener="amtp",result="failed_alert"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"amtp_pool_mailbox_depth{member="0",pool="worker"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"amtp_pool_messages_handled_total{member="0",pool="worker"}"#
        ),
        Some(1.0)
    );
    // At least: handshake tests in this process may record too, once metrics are enabled.
    for (series, least) in [
        (r#"amtp_tls_chain_cache_lookups_total{result="hit"}"#, 2.0),
        (r#"amtp_tls_chain_cache_lookups_total{result="miss"}"#, 1.0),
        (r#"amtp_tls_tickets_declined_total{reason="chain"}"#, 1.0),
    ] {
        assert!(sample(&text, series).unwrap() >= least, "{series}: {text}");
    }
    let busy = sample(
        &text,
        r#"amtp_pool_busy_seconds_total{member="0",pool="worker"}"#,
    )
    .unwrap();
    assert!(busy >= 0.002, "busy {busy}");
    // Every family has help text and our prefix (or the standard process_ prefix).
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap();
        assert!(
            name.starts_with("amtp_") || name.starts_with("process_"),
            "{name}"
        );
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no help"
        );
    }
    assert!(sample(&text, "process_resident_memory_bytes").unwrap() > 0.0);
    assert!(sample(&text, "process_open_fds").unwrap() > 0.0);
}

#[test]
fn reply_codes_are_labelled_without_allocating_wrongly() {
    let mut b = [0u8; 5];
    assert_eq!(code_label(250, &mut b), "250");
    assert_eq!(code_label(0, &mut b), "0");
    assert_eq!(code_label(65535, &mut b), "65535");
}

#[test]
fn inert_meter_does_nothing() {
    let m = pool::Meter::default();
    m.queued();
    let _b = m.handled();
    m.add_busy(1.0);
}

#[test]
fn proc_stat_is_parsed_after_the_last_parenthesis() {
    // A command name with spaces and a parenthesis, as the kernel prints it.
    let line = "4242 (amtp relay) x) S 1 4242 4242 0 -1 4194560 1500 0 0 0 250 75 0 0 20 0 9 0 \
                12345 1048576000 51200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
    let s = parse_stat(line, 100.0).unwrap();
    assert!((s.cpu_seconds - 3.25).abs() < 1e-9);
    assert_eq!(s.threads, 9);
    assert_eq!(s.start_ticks, 12345);
    assert_eq!(s.virtual_bytes, 1_048_576_000);
    assert_eq!(s.rss_pages, 51200);
    assert_eq!(parse_stat("garbage", 100.0), None);
    assert_eq!(
        parse_max_fds(
            "Limit                     Soft Limit           Hard Limit           Units\n\
             Max open files            1024                 524288               files\n"
        ),
        Some(1024)
    );
    assert_eq!(
        parse_boot_time("cpu 1 2 3\nbtime 1764547200\n"),
        Some(1_764_547_200.0)
    );
}

#[actix_rt::test]
async fn metered_sends_count_depth_in_and_the_handler_counts_it_out() {
    use actix::prelude::*;
    struct Slow(pool::Meter);
    impl Actor for Slow {
        type Context = Context<Self>;
    }
    #[derive(Message)]
    #[rtype(result = "u32")]
    struct Ping(u32);
    impl Handler<Ping> for Slow {
        type Result = u32;
        fn handle(&mut self, p: Ping, _: &mut Context<Self>) -> u32 {
            let _busy = self.0.handled();
            p.0
        }
    }
    enable();
    let meter = pool::Meter::new("test_metered", 0);
    let to = Metered {
        to: Slow(meter.clone()).start().recipient(),
        meter,
    };
    assert_eq!(to.send(Ping(7)).await.unwrap(), 7);
    to.try_send(Ping(8)).unwrap();
    assert_eq!(to.send(Ping(9)).await.unwrap(), 9); // after 8 was handled (mailbox order)
    let text = get().unwrap().render();
    assert_eq!(
        sample(
            &text,
            r#"amtp_pool_mailbox_depth{member="0",pool="test_metered"}"#
        ),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"amtp_pool_messages_handled_total{member="0",pool="test_metered"}"#
        ),
        Some(3.0)
    );
}
