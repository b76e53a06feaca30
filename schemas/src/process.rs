//! Who this process is, for the leases processes of an installation take from one another.

/// A name for this process, unique across hosts and restarts: the host's name, the process id
/// and the instant it was asked for (`host-pid-µs`).
pub fn holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}-{}-{}", std::process::id(), crate::period::now_us())
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_holders_of_one_process_differ() {
        let (a, b) = (super::holder(), super::holder());
        assert!(a.contains(&format!("-{}-", std::process::id())), "{a}");
        std::thread::sleep(std::time::Duration::from_millis(1));
        assert_ne!(a, super::holder());
        assert_ne!(b, super::holder());
    }
}
