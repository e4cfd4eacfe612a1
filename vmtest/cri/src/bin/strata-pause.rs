//! The pods' sandbox program (Kubernetes' `pause`, which no registry can bring here): it holds
//! the pod's namespaces by sleeping in pause(2), reaps the children it inherits as pid 1 of a
//! shared pid namespace, and exits 0 on SIGINT or SIGTERM.

use std::os::raw::c_int;

extern "C" fn on_stop(_: c_int) {
    // SAFETY: _exit is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(0) }
}

extern "C" fn on_child(_: c_int) {
    // Reaps every exited child; waitpid is async-signal-safe.
    loop {
        // SAFETY: waitpid with a null status pointer only reaps.
        let pid = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if pid <= 0 {
            break;
        }
    }
}

fn handle(signal: c_int, handler: extern "C" fn(c_int)) -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid value; every field we rely on is set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler as usize;
    action.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
    // SAFETY: sigemptyset on a sigset_t we own.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: the handler is an extern "C" fn that only calls async-signal-safe functions.
    if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn main() {
    for (signal, handler) in
        [(libc::SIGINT, on_stop as extern "C" fn(c_int)), (libc::SIGTERM, on_stop), (libc::SIGCHLD, on_child)]
    {
        if let Err(e) = handle(signal, handler) {
            eprintln!("strata-pause: handling signal {signal}: {e}");
            std::process::exit(1);
        }
    }
    loop {
        // SAFETY: pause(2) only waits for a signal.
        unsafe { libc::pause() };
    }
}
