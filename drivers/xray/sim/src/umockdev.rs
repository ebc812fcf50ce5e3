//! The simulated panel as `umockdev` files, for tests of the real USB code path (libusb
//! through rusb): a device description of our detector (sysfs attributes and descriptors,
//! 4d56:0d01, at [`DEVNODE`]) and an ioctl script of a usbfs conversation with it.
//! Run a program against them with
//! `umockdev-run -d panel.umockdev -i /dev/bus/usb/001/002=panel.ioctl -- PROGRAM`.

use std::fmt::Write as _;

use xray_proto::detector::{Command, MAX_TRANSFER};

/// Where the panel appears.
pub const DEVNODE: &str = "/dev/bus/usb/001/002";

/// Device, configuration, interface and two bulk endpoint descriptors.
fn descriptors() -> String {
    [
        // Device: USB 2.0, class in the interface, EP0 64 bytes, 4d56:0d01, version 1.00.
        "1201000200000040564D010D000101020301",
        // Configuration: 32 bytes in all, one interface, bus powered, 100 mA.
        "090220000101008032",
        // Interface 0: two endpoints, vendor-specific class.
        "0904000002FF000000",
        // Bulk OUT 0x01 and bulk IN 0x82, 512-byte packets.
        "07050102000200",
        "07058202000200",
    ]
    .concat()
}

/// The device description (`umockdev-record` format).
pub fn device_file() -> String {
    let d = descriptors();
    format!(
        "P: /devices/pci0000:00/0000:00:14.0/usb1/1-1\n\
         N: bus/usb/001/002={d}\n\
         E: BUSNUM=001\nE: DEVNAME={DEVNODE}\nE: DEVNUM=002\nE: DEVTYPE=usb_device\nE: DRIVER=usb\n\
         E: ID_VENDOR_ID=4d56\nE: ID_MODEL_ID=0d01\nE: MAJOR=189\nE: MINOR=1\nE: PRODUCT=4d56/d01/100\n\
         E: SUBSYSTEM=usb\nE: TYPE=0/0/0\n\
         A: bConfigurationValue=1\nA: bDeviceClass=00\nA: bNumConfigurations=1\nA: bNumInterfaces= 1\n\
         A: busnum=1\\n\nH: descriptors={d}\nA: dev=189:1\nA: devnum=2\\n\nA: devpath=1\n\
         A: idProduct=0d01\nA: idVendor=4d56\nA: speed=480\nA: version= 2.00\n"
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02X}");
        s
    })
}

/// The usbfs conversation: the host sends `commands` (one bulk OUT transfer each); then
/// the panel streams `transfers` (bulk IN, read with 16 KiB buffers, as `xray-usb` does).
pub fn ioctl_script(commands: &[Command], transfers: &[Vec<u8>]) -> String {
    let mut s = String::new();
    for cmd in commands {
        let b = cmd.encode();
        // type 3 (bulk), endpoint 0x01, status 0, flags 0, length, actual, errors, data.
        let _ = writeln!(s, "USBDEVFS_REAPURBNDELAY 0 3 1 0 0 {0} {0} 0 {1}", b.len(), hex(&b));
    }
    for t in transfers {
        let _ = writeln!(s, "USBDEVFS_REAPURBNDELAY 0 3 130 0 0 {MAX_TRANSFER} {} 0 {}", t.len(), hex(t));
    }
    s
}
