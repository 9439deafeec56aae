//! Puts the host terminal into the mode a serial console needs and puts it
//! back however chv exits.

use std::sync::Mutex;

static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Switches stdin to character-at-a-time mode without echo, keeping signal
/// keys (Ctrl-C stops chv). Does nothing when stdin is not a terminal.
pub fn set_raw_mode() {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
        return;
    }
    // SAFETY: a zeroed termios is a valid out-parameter for tcgetattr.
    let mut tio: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and pointer to a termios we own.
    if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut tio) } != 0 {
        return;
    }
    let mut saved = SAVED.lock().unwrap_or_else(|e| e.into_inner());
    if saved.is_none() {
        *saved = Some(tio);
    }
    tio.c_lflag &= !(libc::ICANON | libc::ECHO | libc::IEXTEN);
    tio.c_iflag &= !(libc::ICRNL | libc::IXON);
    tio.c_cc[libc::VMIN] = 1;
    tio.c_cc[libc::VTIME] = 0;
    // SAFETY: valid fd and pointer to an initialized termios.
    unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &tio) };
}

/// Restores the terminal settings saved by [`set_raw_mode`], if any.
pub fn restore() {
    let saved = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(tio) = saved {
        // SAFETY: valid fd and pointer to the termios saved earlier.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &tio) };
    }
}
