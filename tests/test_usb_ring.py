"""The ReSpeaker USB Mic Array v2.0's LED ring, at the byte level: pyusb itself, on a backend stand-in that plays
the array (its USB id and descriptor) and keeps every control transfer, as libusb would carry it."""

import dataclasses
import time

import pytest
import usb.core
from usb.backend import IBackend

from guard import config
from guard.errors import DeviceError
from guard.hardware import COLOURS, PATTERNS, RELEASED_FLASHES, UsbRing, usb_ring_problem
from guard.vocabulary import LedPattern

RING = dataclasses.replace(config.GpioConfig(), led_type="usb-ring")
VENDOR_OUT = 0x40  # host to device, vendor request, recipient device


class Descriptor:
    """The array's device descriptor, as libusb reports it."""

    bLength, bDescriptorType, bcdUSB, bDeviceClass, bDeviceSubClass, bDeviceProtocol = 18, 1, 0x200, 0, 0, 0
    bMaxPacketSize0, bcdDevice, iManufacturer, iProduct, iSerialNumber, bNumConfigurations = 64, 0x300, 1, 2, 0, 1
    address, bus, port_number, port_numbers, speed = 5, 1, 1, (1,), 3

    def __init__(self, vendor: int, product: int) -> None:
        self.idVendor, self.idProduct = vendor, product


class UsbBus(IBackend):
    """pyusb's backend interface with the devices on the bus, keeping the control transfers sent."""

    def __init__(self, *devices: Descriptor) -> None:
        self.devices, self.sent = devices, []

    def enumerate_devices(self):
        yield from self.devices

    def get_device_descriptor(self, dev):
        return dev

    def open_device(self, dev):
        return dev

    def close_device(self, handle):
        pass

    def ctrl_transfer(self, handle, bmRequestType, bRequest, wValue, wIndex, data, timeout):
        self.sent.append((bmRequestType, bRequest, wValue, wIndex, bytes(data)))
        return len(data)


def _mono(colour) -> tuple:
    return VENDOR_OUT, 0, 0x01, 0x1C, bytes([*(round(255 * c) for c in colour), 0])


@pytest.fixture
def bus():
    return UsbBus(Descriptor(0x1d6b, 0x0002), Descriptor(0x2886, 0x0018))  # a root hub, then the array


def test_the_ring_is_found_by_its_usb_id_set_to_its_brightness_and_dark(bus):
    ring = UsbRing(dataclasses.replace(RING, led_brightness=20), bus)
    ring.close()
    assert bus.sent[:2] == [(VENDOR_OUT, 0, 0x20, 0x1C, bytes([20])), _mono((0, 0, 0))]


@pytest.mark.parametrize("pattern", list(LedPattern))
def test_every_pattern_shows_in_its_colour_on_the_whole_ring(bus, pattern):
    ring = UsbRing(RING, bus)
    try:
        ring.show(pattern)
        shown = bus.sent[2:]
        assert shown[0] == _mono(COLOURS.get(pattern, (0, 0, 0))), "its colour, at once"
        assert set(shown) <= {shown[0], _mono((0, 0, 0))}, "then only dark"
    finally:
        ring.close()
    assert bus.sent[-1] == _mono((0, 0, 0)), "dark when closed"


def test_pending_blinks_and_released_flashes_three_times(bus):
    ring = UsbRing(RING, bus)
    try:
        ring.show(LedPattern.PENDING)
        time.sleep(1.0)
        pending = bus.sent[2:]
        assert pending[0] == _mono(COLOURS[LedPattern.PENDING])
        assert all(a != b for a, b in zip(pending, pending[1:], strict=False)) and len(pending) >= 3
        assert len(pending) <= 2 * 1.0 / sum(PATTERNS[LedPattern.PENDING]) + 2
        start = len(bus.sent)
        ring.show(LedPattern.RELEASED)
        time.sleep(0.6)
        flashes = [t for t in bus.sent[start:] if t == _mono(COLOURS[LedPattern.RELEASED])]
        assert len(flashes) == RELEASED_FLASHES and bus.sent[-1] == _mono((0, 0, 0))
    finally:
        ring.close()


def test_no_array_plugged_in_is_one_line_with_the_way_forward():
    alone = UsbBus(Descriptor(0x1d6b, 0x0002))
    expected = ('[gpio] led_type = "usb-ring": no ReSpeaker USB Mic Array v2.0 (USB 2886:0018) is plugged in; '
                "plug it in, or choose another [gpio] led_type")
    assert usb_ring_problem(RING, alone) == expected
    with pytest.raises(DeviceError, match=r"^\[gpio\] led_type = \"usb-ring\": no ReSpeaker"):
        UsbRing(RING, alone)
    assert usb_ring_problem(config.GpioConfig(), alone) is None, "a GPIO LED needs no USB"


def test_a_ring_unplugged_while_running_is_logged_and_the_guard_goes_on(bus, caplog):
    ring = UsbRing(RING, bus)

    def gone(*args):
        raise usb.core.USBError("No such device (it may have been disconnected)")

    bus.ctrl_transfer = gone
    ring.show(LedPattern.MUTED)  # steady: no thread; the error is logged, not raised
    ring.close()
    assert "ReSpeaker USB ring not updated (" in caplog.text and "No such device" in caplog.text
