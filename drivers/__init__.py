"""Drivers for TC boards: PyVISA (pyvisa-py) over TCP sockets and serial lines, or plain pyserial.

* :mod:`drivers.blocks` - IEEE 488.2 definite-length blocks, little-endian float32/int16;
* :mod:`drivers.transport` - byte transports (:class:`VisaTransport`, :class:`SerialTransport`);
* :mod:`drivers.scpi` - :class:`ScpiSession`: error queue, blocks, reconnect and retry;
* :mod:`drivers.board` - :class:`TCBoard`, a :class:`tc_hw.model.device.Device`;
* :mod:`drivers.lock` - one controlling process per board (:class:`BoardBusyError`).

Backends for ``tc_hw.backends``: :func:`open_visa` (``visa``) and :func:`open_serial` (``serial``).
Everything logs to the ``tc_hw.drivers`` logger.
"""

from .blocks import BlockFormatError, decode_block, encode_block
from .board import DAC_LSB_V, DAC_SPAN_V, MapError, TCBoard, open_board, open_serial, open_visa, parse_channel_map
from .lock import BoardBusyError
from .scpi import BoardError, ConnectionLost, ProtocolError, ReplyTimeout, ScpiSession
from .transport import SerialTransport, Transport, TransportClosed, TransportTimeout, VisaTransport, open_transport

__all__ = [
    "TCBoard",
    "open_visa",
    "open_serial",
    "open_board",
    "parse_channel_map",
    "MapError",
    "DAC_LSB_V",
    "DAC_SPAN_V",
    "BoardBusyError",
    "ScpiSession",
    "BoardError",
    "ProtocolError",
    "ConnectionLost",
    "ReplyTimeout",
    "Transport",
    "VisaTransport",
    "SerialTransport",
    "TransportClosed",
    "TransportTimeout",
    "open_transport",
    "BlockFormatError",
    "encode_block",
    "decode_block",
]
