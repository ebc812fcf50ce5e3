//! An SQLite VFS that simulates a power cut, and a full disk.
//!
//! A process kill does not lose data the kernel already has in its page cache; a power cut
//! does. This VFS keeps every file's written-but-unsynced bytes in memory, and writes them
//! to the real file only on `xSync`. When the cut comes (after a chosen number of writes),
//! every later operation fails, and the unsynced writes are dropped, except that a random
//! subset of them may be kept whole, as disks complete some writes and not others in no
//! particular order. (Torn pages within one write are not simulated.) What is left on disk
//! is what a van would find after the battery was pulled.
//!
//! The model is stricter than a real OS in one way: closing the last handle of a file
//! drops its unsynced bytes, where a kernel would keep them in its page cache. SQLite syncs
//! before relying on anything it wrote, so this only makes the harness harsher.
//!
//! Files are shared by path, so two connections of one process see the same unsynced bytes,
//! as they would through the page cache. Shared-memory (WAL index) and locking calls go to
//! the real VFS: SQLite rebuilds the WAL index after a crash anyway.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rusqlite::ffi;

/// Controls a registered VFS: when the power goes, and how big the disk is.
#[derive(Debug)]
pub struct Control {
    cut: AtomicBool,
    writes: AtomicU64,
    cut_after: AtomicU64,
    quota: AtomicU64,
    written: AtomicU64,
    seed: AtomicU64,
    sync_delay_us: AtomicU64,
    files: Mutex<HashMap<String, Arc<Mutex<Shared>>>>,
}

impl Control {
    /// Cuts the power at the `n`th write from now (the write is lost too).
    pub fn cut_after_writes(&self, n: u64) {
        self.writes.store(0, Ordering::SeqCst);
        self.cut_after.store(n.max(1), Ordering::SeqCst);
    }

    /// Cuts the power now.
    pub fn cut_now(&self) {
        self.power_cut();
    }

    /// Whether the power has been cut.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Writes seen since the last [`Control::cut_after_writes`].
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Makes writes fail with `SQLITE_FULL` once this many more bytes have been written.
    pub fn set_disk_quota(&self, bytes: u64) {
        self.written.store(0, Ordering::SeqCst);
        self.quota.store(bytes, Ordering::SeqCst);
    }

    /// Lifts the quota (space was freed).
    pub fn clear_disk_quota(&self) {
        self.quota.store(u64::MAX, Ordering::SeqCst);
    }

    /// Makes every sync take this long, as on slow flash (a van's eMMC syncs in
    /// milliseconds, this VM's disk in tenths of one). For benchmarks.
    pub fn set_sync_delay(&self, delay: std::time::Duration) {
        self.sync_delay_us.store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    /// Seeds the choice of which unsynced writes survive a cut.
    pub fn set_seed(&self, seed: u64) {
        self.seed.store(seed | 1, Ordering::SeqCst);
    }

    /// Files still open through this VFS. Restore power only once this is zero: a
    /// connection that outlived the cut would write its lost state back.
    pub fn open_files(&self) -> usize {
        lock(&self.files).len()
    }

    /// Restores power: later opens start from what is on disk.
    pub fn restore(&self) {
        self.cut_after.store(u64::MAX, Ordering::SeqCst);
        self.cut.store(false, Ordering::SeqCst);
    }

    fn power_cut(&self) {
        if self.cut.swap(true, Ordering::SeqCst) {
            return;
        }
        // Disks complete some writes they were given and not others: keep a random subset
        // of the unsynced ranges. The registry stays locked throughout, so no file can be
        // closed (and its real handle freed) while it is written here.
        let files = lock(&self.files);
        for f in files.values() {
            let mut s = lock(f);
            let ranges = std::mem::take(&mut s.dirty);
            for (start, end) in ranges {
                if self.next_random().is_multiple_of(2) {
                    continue;
                }
                let end = end.min(s.data.len());
                if start < end {
                    let _ = s.persist(start, end);
                }
            }
        }
    }

    fn next_random(&self) -> u64 {
        // xorshift64: deterministic for a given seed, good enough to pick subsets.
        let mut x = self.seed.load(Ordering::SeqCst);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed.store(x, Ordering::SeqCst);
        x
    }

    /// Counts a write; returns an SQLite error code if it must fail.
    fn on_write(&self, bytes: u64) -> Option<c_int> {
        if self.is_cut() {
            return Some(ffi::SQLITE_IOERR_WRITE);
        }
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= self.cut_after.load(Ordering::SeqCst) {
            self.power_cut();
            return Some(ffi::SQLITE_IOERR_WRITE);
        }
        let written = self.written.fetch_add(bytes, Ordering::SeqCst) + bytes;
        if written > self.quota.load(Ordering::SeqCst) {
            self.written.fetch_sub(bytes, Ordering::SeqCst);
            return Some(ffi::SQLITE_FULL);
        }
        None
    }
}

/// A file's contents as the page cache holds them, and which ranges are not yet on disk.
#[derive(Debug)]
struct Shared {
    data: Vec<u8>,
    dirty: Vec<(usize, usize)>,
    /// The real file, opened through the base VFS, used to persist synced ranges.
    real: RealFile,
    disk_len: usize,
    refs: usize,
}

impl Shared {
    fn persist(&mut self, start: usize, end: usize) -> c_int {
        // SAFETY: `real` is an open file of the base VFS for as long as `Shared` lives.
        unsafe { self.real.write(&self.data[start..end], start as i64) }
    }

    fn sync(&mut self, flags: c_int) -> c_int {
        let ranges = std::mem::take(&mut self.dirty);
        if self.data.len() != self.disk_len {
            // SAFETY: as above.
            let rc = unsafe { self.real.truncate(self.data.len() as i64) };
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            self.disk_len = self.data.len();
        }
        for (start, end) in ranges {
            let end = end.min(self.data.len());
            if start < end {
                let rc = self.persist(start, end);
                if rc != ffi::SQLITE_OK {
                    return rc;
                }
            }
        }
        // SAFETY: as above.
        unsafe { self.real.sync(flags) }
    }
}

/// A file of the base VFS, in memory we own.
#[derive(Debug)]
struct RealFile {
    buf: Vec<u64>,
}

// SAFETY: the base VFS's files are usable from any thread (SQLite serialises access per
// connection, and `Shared` is behind a mutex).
unsafe impl Send for RealFile {}

impl RealFile {
    fn ptr(&mut self) -> *mut ffi::sqlite3_file {
        self.buf.as_mut_ptr().cast()
    }

    unsafe fn methods(&self) -> &'static ffi::sqlite3_io_methods {
        // SAFETY: the base VFS set pMethods, a pointer to its static method table, when it
        // opened the file.
        unsafe { &*(*self.buf.as_ptr().cast::<ffi::sqlite3_file>()).pMethods }
    }

    unsafe fn write(&mut self, data: &[u8], off: i64) -> c_int {
        let p = self.ptr();
        // SAFETY: delegating to the base VFS with its own file.
        unsafe { (self.methods().xWrite.expect("xWrite"))(p, data.as_ptr().cast(), data.len() as c_int, off) }
    }

    unsafe fn truncate(&mut self, size: i64) -> c_int {
        let p = self.ptr();
        // SAFETY: as above.
        unsafe { (self.methods().xTruncate.expect("xTruncate"))(p, size) }
    }

    unsafe fn sync(&mut self, flags: c_int) -> c_int {
        let p = self.ptr();
        // SAFETY: as above.
        unsafe { (self.methods().xSync.expect("xSync"))(p, flags) }
    }
}

/// Our file object, as SQLite allocates it (`szOsFile` bytes).
#[repr(C)]
struct File {
    base: ffi::sqlite3_file,
    /// Set for files SQLite opens without a name (temporary files): plain pass-through.
    passthrough: *mut RealFile,
    /// Set for named files.
    shared: *const Mutex<Shared>,
    /// A second base-VFS handle used for locks and shared memory, per connection.
    locks: *mut RealFile,
    control: *const Control,
    path: *mut c_char,
}

struct Registered {
    control: Arc<Control>,
}

static REGISTRY: OnceLock<Mutex<HashMap<String, Registered>>> = OnceLock::new();

/// Registers a power-cut VFS under `name` (once per name) and returns its control.
pub fn register(name: &str) -> Arc<Control> {
    let registry = REGISTRY.get_or_init(|| Mutex::new(HashMap::new()));
    let mut reg = lock(registry);
    if let Some(r) = reg.get(name) {
        return r.control.clone();
    }
    let control = Arc::new(Control {
        cut: AtomicBool::new(false),
        writes: AtomicU64::new(0),
        cut_after: AtomicU64::new(u64::MAX),
        quota: AtomicU64::new(u64::MAX),
        written: AtomicU64::new(0),
        seed: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
        sync_delay_us: AtomicU64::new(0),
        files: Mutex::new(HashMap::new()),
    });
    // SAFETY: sqlite3_vfs_find(NULL) returns the default VFS, valid for the process.
    unsafe {
        let base = ffi::sqlite3_vfs_find(ptr::null());
        assert!(!base.is_null(), "SQLite has a default VFS");
        let mut vfs: ffi::sqlite3_vfs = *base;
        vfs.szOsFile = std::mem::size_of::<File>() as c_int;
        vfs.zName = CString::new(name).expect("VFS name without NUL").into_raw();
        vfs.pAppData = Arc::into_raw(control.clone()) as *mut c_void;
        vfs.pNext = ptr::null_mut();
        vfs.xOpen = Some(x_open);
        vfs.xDelete = Some(x_delete);
        let leaked = Box::into_raw(Box::new(vfs));
        let rc = ffi::sqlite3_vfs_register(leaked, 0);
        assert_eq!(rc, ffi::SQLITE_OK, "registering the power-cut VFS");
    }
    reg.insert(name.to_owned(), Registered { control: control.clone() });
    control
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

unsafe fn base_vfs() -> *mut ffi::sqlite3_vfs {
    // SAFETY: the default VFS lives for the whole process.
    unsafe { ffi::sqlite3_vfs_find(ptr::null()) }
}

unsafe fn open_real(name: *const c_char, flags: c_int, out_flags: *mut c_int) -> Result<RealFile, c_int> {
    // SAFETY: the base VFS writes at most szOsFile bytes into the buffer we give it.
    unsafe {
        let base = base_vfs();
        let words = ((*base).szOsFile as usize).div_ceil(8);
        let mut real = RealFile { buf: vec![0u64; words.max(1)] };
        let rc = ((*base).xOpen.expect("xOpen"))(base, name, real.ptr(), flags, out_flags);
        if rc != ffi::SQLITE_OK {
            return Err(rc);
        }
        Ok(real)
    }
}

unsafe extern "C" fn x_open(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite passes our VFS and a buffer of szOsFile bytes for the file.
    unsafe {
        let f = file.cast::<File>();
        ptr::write(
            f,
            File {
                base: ffi::sqlite3_file { pMethods: ptr::null() },
                passthrough: ptr::null_mut(),
                shared: ptr::null(),
                locks: ptr::null_mut(),
                control: (*vfs).pAppData as *const Control,
                path: ptr::null_mut(),
            },
        );
        let control = &*(*f).control;
        if name.is_null() || flags & ffi::SQLITE_OPEN_DELETEONCLOSE != 0 {
            match open_real(name, flags, out_flags) {
                Ok(real) => (*f).passthrough = Box::into_raw(Box::new(real)),
                Err(rc) => return rc,
            }
            (*f).base.pMethods = &METHODS;
            return ffi::SQLITE_OK;
        }
        if control.is_cut() {
            return ffi::SQLITE_IOERR;
        }
        let path = CStr::from_ptr(name).to_string_lossy().into_owned();
        // Per-connection handle: locks and shared memory are per open file in SQLite's model.
        let mut locks = match open_real(name, flags, out_flags) {
            Ok(r) => r,
            Err(rc) => return rc,
        };
        let mut files = lock(&control.files);
        let shared = match files.get(&path) {
            Some(s) => {
                lock(s).refs += 1;
                s.clone()
            }
            None => {
                let mut real = match open_real(name, flags & !ffi::SQLITE_OPEN_EXCLUSIVE, ptr::null_mut()) {
                    Ok(r) => r,
                    Err(rc) => {
                        // Do not leak the handle opened for locks.
                        let p = locks.ptr();
                        if let Some(close) = locks.methods().xClose {
                            close(p);
                        }
                        return rc;
                    }
                };
                let mut size: ffi::sqlite3_int64 = 0;
                let m = real.methods();
                (m.xFileSize.expect("xFileSize"))(real.ptr(), &mut size);
                let mut data = vec![0u8; size as usize];
                if size > 0 {
                    (m.xRead.expect("xRead"))(real.ptr(), data.as_mut_ptr().cast(), size as c_int, 0);
                }
                let s =
                    Arc::new(Mutex::new(Shared { data, dirty: Vec::new(), real, disk_len: size as usize, refs: 1 }));
                files.insert(path.clone(), s.clone());
                s
            }
        };
        (*f).shared = Arc::into_raw(shared);
        (*f).locks = Box::into_raw(Box::new(locks));
        (*f).path = CString::new(path).unwrap_or_default().into_raw();
        (*f).base.pMethods = &METHODS;
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn x_delete(vfs: *mut ffi::sqlite3_vfs, name: *const c_char, sync_dir: c_int) -> c_int {
    // SAFETY: SQLite passes our VFS; pAppData is our control.
    unsafe {
        let control = &*((*vfs).pAppData as *const Control);
        if control.is_cut() {
            return ffi::SQLITE_IOERR_DELETE;
        }
        let path = CStr::from_ptr(name).to_string_lossy().into_owned();
        if let Some(s) = lock(&control.files).get(&path) {
            let mut s = lock(s);
            s.data.clear();
            s.dirty.clear();
            s.disk_len = 0;
        }
        let base = base_vfs();
        ((*base).xDelete.expect("xDelete"))(base, name, sync_dir)
    }
}

unsafe fn parts<'a>(file: *mut ffi::sqlite3_file) -> (&'a mut File, &'a Control) {
    // SAFETY: every file with our methods was initialised by x_open.
    unsafe {
        let f = &mut *file.cast::<File>();
        let c = &*f.control;
        (f, c)
    }
}

macro_rules! delegate {
    ($f:expr, $method:ident $(, $arg:expr)*) => {{
        let real: &mut RealFile = if !$f.passthrough.is_null() { &mut *$f.passthrough } else { &mut *$f.locks };
        let p = real.ptr();
        match real.methods().$method {
            Some(m) => m(p $(, $arg)*),
            None => ffi::SQLITE_IOERR,
        }
    }};
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: called once per opened file; we free what x_open allocated.
    unsafe {
        let (f, control) = parts(file);
        let rc = delegate!(f, xClose);
        if !f.passthrough.is_null() {
            drop(Box::from_raw(f.passthrough));
            return rc;
        }
        drop(Box::from_raw(f.locks));
        let shared = Arc::from_raw(f.shared);
        let path = CString::from_raw(f.path).to_string_lossy().into_owned();
        // Hold the registry while deciding, so no opener can pick up a file being closed.
        let mut files = lock(&control.files);
        let mut s = lock(&shared);
        s.refs -= 1;
        if s.refs == 0 {
            files.remove(&path);
            let p = s.real.ptr();
            if let Some(close) = s.real.methods().xClose {
                close(p);
            }
        }
        rc
    }
}

unsafe extern "C" fn x_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amt: c_int,
    off: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: buf holds amt bytes, per SQLite's contract.
    unsafe {
        let (f, _) = parts(file);
        if !f.passthrough.is_null() {
            return delegate!(f, xRead, buf, amt, off);
        }
        let s = lock(&*f.shared);
        let out = std::slice::from_raw_parts_mut(buf.cast::<u8>(), amt as usize);
        let off = off as usize;
        let avail = s.data.len().saturating_sub(off).min(out.len());
        if avail > 0 {
            out[..avail].copy_from_slice(&s.data[off..off + avail]);
        }
        if avail < out.len() {
            out[avail..].fill(0);
            return ffi::SQLITE_IOERR_SHORT_READ;
        }
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amt: c_int,
    off: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: buf holds amt bytes, per SQLite's contract.
    unsafe {
        let (f, control) = parts(file);
        if !f.passthrough.is_null() {
            return delegate!(f, xWrite, buf, amt, off);
        }
        if let Some(rc) = control.on_write(amt as u64) {
            return rc;
        }
        let data = std::slice::from_raw_parts(buf.cast::<u8>(), amt as usize);
        let mut s = lock(&*f.shared);
        let (start, end) = (off as usize, off as usize + amt as usize);
        if s.data.len() < end {
            s.data.resize(end, 0);
        }
        s.data[start..end].copy_from_slice(data);
        s.dirty.push((start, end));
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    // SAFETY: see x_open.
    unsafe {
        let (f, control) = parts(file);
        if !f.passthrough.is_null() {
            return delegate!(f, xTruncate, size);
        }
        if control.is_cut() {
            return ffi::SQLITE_IOERR_TRUNCATE;
        }
        lock(&*f.shared).data.truncate(size as usize);
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn x_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: see x_open.
    unsafe {
        let (f, control) = parts(file);
        if !f.passthrough.is_null() {
            return delegate!(f, xSync, flags);
        }
        if control.is_cut() {
            return ffi::SQLITE_IOERR_FSYNC;
        }
        let delay = control.sync_delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_micros(delay));
        }
        lock(&*f.shared).sync(flags)
    }
}

unsafe extern "C" fn x_file_size(file: *mut ffi::sqlite3_file, size: *mut ffi::sqlite3_int64) -> c_int {
    // SAFETY: see x_open.
    unsafe {
        let (f, _) = parts(file);
        if !f.passthrough.is_null() {
            return delegate!(f, xFileSize, size);
        }
        *size = lock(&*f.shared).data.len() as ffi::sqlite3_int64;
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn x_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: see x_open.
    unsafe {
        let (f, _) = parts(file);
        delegate!(f, xLock, level)
    }
}

unsafe extern "C" fn x_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: see x_open.
    unsafe {
        let (f, _) = parts(file);
        delegate!(f, xUnlock, level)
    }
}

unsafe extern "C" fn x_check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    // SAFETY: see x_open.
    unsafe {
        let (f, _) = parts(file);
        delegate!(f, xCheckReservedLock, out)
    }
}

unsafe extern "C" fn x_file_control(file: *mut ffi::sqlite3_file, op: c_int, arg: *mut c_void) -> c_int {
    // SAFETY: see x_open.
    unsafe {
        let (f, _) = parts(file);
        if !f.passthrough.is_null() {
            return delegate!(f, xFileControl, op, arg);
        }
        // Size hints, chunk sizes and the like would act on the real file behind our back.
        ffi::SQLITE_NOTFOUND
    }
}

unsafe extern "C" fn x_sector_size(_file: *mut ffi::sqlite3_file) -> c_int {
    4096
}

unsafe extern "C" fn x_device_characteristics(_file: *mut ffi::sqlite3_file) -> c_int {
    // Promise nothing: no atomic writes, no power-safe overwrite.
    0
}

unsafe extern "C" fn x_shm_map(
    file: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: see x_open.
    unsafe {
        let (f, _) = parts(file);
        delegate!(f, xShmMap, region, size, extend, out)
    }
}

unsafe extern "C" fn x_shm_lock(file: *mut ffi::sqlite3_file, offset: c_int, n: c_int, flags: c_int) -> c_int {
    // SAFETY: see x_open.
    unsafe {
        let (f, _) = parts(file);
        delegate!(f, xShmLock, offset, n, flags)
    }
}

unsafe extern "C" fn x_shm_barrier(file: *mut ffi::sqlite3_file) {
    // SAFETY: see x_open.
    unsafe {
        let (f, _) = parts(file);
        let real: &mut RealFile = if !f.passthrough.is_null() { &mut *f.passthrough } else { &mut *f.locks };
        let p = real.ptr();
        if let Some(m) = real.methods().xShmBarrier {
            m(p);
        }
    }
}

unsafe extern "C" fn x_shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    // SAFETY: see x_open.
    unsafe {
        let (f, _) = parts(file);
        delegate!(f, xShmUnmap, delete)
    }
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 2,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: Some(x_shm_map),
    xShmLock: Some(x_shm_lock),
    xShmBarrier: Some(x_shm_barrier),
    xShmUnmap: Some(x_shm_unmap),
    xFetch: None,
    xUnfetch: None,
};
