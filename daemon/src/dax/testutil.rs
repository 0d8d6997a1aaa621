//! A recording fake [`Mapper`] for the DAX unit tests.

use std::fs::File;
use std::io;
use std::sync::Mutex;

use super::Mapper;

/// One call to the fake mapper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Map(u64, u64, u64, bool),
    Unmap(u64, u64),
}

/// A fake mapper recording its calls; fails every call with `fail` when set.
#[derive(Default)]
pub struct Recorder {
    calls: Mutex<Vec<Call>>,
    fail: Mutex<Option<i32>>,
}

impl Recorder {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }
    pub fn fail_with(&self, errno: Option<i32>) {
        *self.fail.lock().expect("fail") = errno;
    }
    fn result(&self, call: Call) -> io::Result<()> {
        self.calls.lock().expect("calls").push(call);
        match *self.fail.lock().expect("fail") {
            Some(n) => Err(io::Error::from_raw_os_error(n)),
            None => Ok(()),
        }
    }
}

impl Mapper for Recorder {
    fn map(&self, mo: u64, len: u64, _: &File, fo: u64, w: bool) -> io::Result<()> {
        self.result(Call::Map(mo, len, fo, w))
    }
    fn unmap(&self, mo: u64, len: u64) -> io::Result<()> {
        self.result(Call::Unmap(mo, len))
    }
}

/// A file to hand to mappers.
pub fn file() -> File {
    File::open("/dev/null").expect("open /dev/null")
}
