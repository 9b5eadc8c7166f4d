//! `cairn-ctl`: a small static client of cairn-init's control socket.
//! Output for people by default, `--json` for scripts. Exit 0 on `ok`, 1
//! on an error reply, 2 on a usage or connection problem.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};

mod pty;

use cairn_ctl::client::{connect, open_passed, recv, send_request, send_with};
use cairn_ctl::{parse_args, ps_json, ps_table, split_reply, stream_end, stream_line, Command};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "shell") && args.len() == 1 {
        std::process::exit(shell());
    }
    let cmd = match parse_args(&args, std::env::var("CAIRN_CONTROL").ok()) {
        Ok(c) => c,
        Err(usage) => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let conn = match connection(&cmd) {
        Ok(conn) => conn,
        Err(code) => std::process::exit(code),
    };
    let code = converse(&cmd, &conn);
    // Exit with the connection still open: the kernel closes it only once
    // this exit status is fixed. A server that acts on the hang-up (an
    // update's installer ends, then PID 1 reboots and stops every container)
    // cannot kill this process between the two and turn its answer into a
    // SIGTERM.
    std::process::exit(code);
}

/// `cairn-ctl shell`: one command per line from stdin (the development
/// console, `cairn.console=ctl`), each run as `cairn-ctl WORDS...`; a
/// command that fails prints its code and the shell goes on. Ends at
/// `exit` or end of input.
fn shell() -> i32 {
    println!("cairn-ctl shell: one command per line ('help' lists them, 'exit' ends)");
    let stdin = std::io::stdin();
    loop {
        print!("cairn> ");
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        match stdin.read_line(&mut line) {
            Ok(0) => return 0,
            Ok(_) => {}
            Err(e) => {
                eprintln!("cairn-ctl: reading the console: {e}");
                return 2;
            }
        }
        let words = match cairn_ctl::split_line(&line) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("cairn-ctl: {e}");
                continue;
            }
        };
        match words.first().map(String::as_str) {
            None => continue,
            Some("exit" | "quit") => return 0,
            Some("help") => {
                println!("{}", cairn_ctl::USAGE);
                continue;
            }
            Some(_) => {}
        }
        let code = match parse_args(&words, std::env::var("CAIRN_CONTROL").ok()) {
            Ok(cmd) => connection(&cmd).map_or_else(|code| code, |conn| converse(&cmd, &conn)),
            Err(usage) => {
                eprintln!("{usage}");
                2
            }
        };
        if code != 0 {
            println!("[exit {code}]");
        }
    }
}

/// The control socket, connected; or, having said why not, the exit code.
fn connection(cmd: &Command) -> Result<OwnedFd, i32> {
    connect(&cmd.socket).map_err(|(step, e)| {
        eprintln!("cairn-ctl: {step} {}: {}", cmd.socket, std::io::Error::from_raw_os_error(e));
        2
    })
}

/// `cmd`'s request and its answer over `fd`, printed; the exit code.
fn converse(cmd: &Command, fd: &OwnedFd) -> i32 {
    let passed = match cmd.pass.as_deref().map(open_passed).transpose() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cairn-ctl: open {}: {e}", cmd.pass.as_deref().unwrap_or_default());
            return 2;
        }
    };
    if send_request(fd, &cmd.request, passed.as_ref()) < 0 {
        eprintln!("cairn-ctl: send: {}", std::io::Error::last_os_error());
        return 2;
    }
    let Some(reply) = recv(fd) else {
        eprintln!("cairn-ctl: no reply");
        return if cmd.exec { EXEC_FAILED } else { 2 };
    };
    if cmd.exec {
        return exec(fd, &reply, cmd.tty);
    }
    let body = match split_reply(&reply) {
        Ok(body) => body,
        Err(reason) => {
            if cmd.json {
                println!("{{\"error\":{}}}", cairn_ctl::json_string(&reason));
            } else {
                eprintln!("cairn-ctl: {reason}");
            }
            return 1;
        }
    };
    let mut out = std::io::stdout().lock();
    if cmd.stream {
        if cmd.pass.is_some() && !body.is_empty() {
            let _ = writeln!(out, "{}", stream_line(body, cmd.json)).and_then(|()| out.flush());
        }
        while let Some(msg) = recv(fd) {
            if msg.is_empty() {
                break;
            }
            match stream_end(&msg) {
                Some(Ok(end)) => {
                    if !end.is_empty() {
                        let _ = writeln!(out, "{}", stream_line(end, cmd.json));
                    }
                    return 0;
                }
                Some(Err(reason)) => {
                    if cmd.json {
                        println!("{{\"error\":{}}}", cairn_ctl::json_string(reason));
                    } else {
                        eprintln!("cairn-ctl: {reason}");
                    }
                    return 1;
                }
                None => {}
            }
            if writeln!(out, "{}", stream_line(&msg, cmd.json)).and_then(|()| out.flush()).is_err() {
                break;
            }
        }
        // Streams end with `cairn/1 end`; an update that hangs up without
        // one did not finish (its installer died).
        return i32::from(cmd.pass.is_some());
    }
    let text = match (cmd.ps, cmd.json) {
        (true, true) => ps_json(body),
        (true, false) => ps_table(body),
        (false, true) => format!("{{\"ok\":{}}}", cairn_ctl::json_string(body)),
        (false, false) => body.to_owned(),
    };
    if !text.is_empty() {
        let _ = writeln!(out, "{text}");
    }
    0
}

/// `exec`'s code when the command could not be run (as `docker run`).
const EXEC_FAILED: i32 = 125;

/// After `exec`'s first reply: pass stdin, stdout, stderr (the command
/// writes to them itself) or, with `tty`, a pseudo-terminal's slave that
/// this process relays; then wait for `exit CODE` and exit with it.
fn exec(fd: &OwnedFd, reply: &str, tty: bool) -> i32 {
    if let Err(reason) = split_reply(reply) {
        eprintln!("cairn-ctl: {reason}");
        return EXEC_FAILED;
    }
    let pty = if tty {
        match pty::open() {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("cairn-ctl: opening a pseudo-terminal: {e}");
                return EXEC_FAILED;
            }
        }
    } else {
        None
    };
    let stdio = pty.as_ref().map_or([0, 1, 2], |(_, slave)| [slave.as_raw_fd(); 3]);
    if send_with(fd, b"stdio", &stdio) < 0 {
        eprintln!("cairn-ctl: sending stdio: {}", std::io::Error::last_os_error());
        return EXEC_FAILED;
    }
    if let Some((master, slave)) = pty {
        // The command holds the slave now; ours would keep the master open.
        drop(slave);
        let raw = pty::Raw::stdin();
        pty::relay(&master, fd);
        drop(raw);
    }
    let Some(end) = recv(fd).filter(|m| !m.is_empty()) else {
        eprintln!("cairn-ctl: connection closed before the command's end");
        return EXEC_FAILED;
    };
    if let Some((code, why)) = cairn_ctl::exec_exit(&end) {
        if !why.is_empty() {
            eprintln!("cairn-ctl: {why}");
        }
        return code;
    }
    match split_reply(&end) {
        Err(reason) => eprintln!("cairn-ctl: {reason}"),
        Ok(_) => eprintln!("cairn-ctl: unexpected reply {end:?}"),
    }
    EXEC_FAILED
}
