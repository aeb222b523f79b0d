"""JPEG (ISO/IEC 10918) frames through libjpeg-turbo, which pydicom's plug-ins cannot write."""

from __future__ import annotations

import imagecodecs
import numpy as np
import numpy.typing as npt
from pydicom.uid import JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1

from dicom_node.errors import FactoryError

JPEG_10918 = (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1)
# Quality of the lossy processes: visually lossless, still a real lossy stream.
_QUALITY = 90
# Process 14 allows predictors 1-7; SV1 (.70) is predictor 1, so .57 uses another
# one to exercise a decoder's non-default path.
_PREDICTOR: dict[str, int] = {JPEGLossless: 6, JPEGLosslessSV1: 1}


def encode_jpeg_frame(frame: npt.NDArray[np.unsignedinteger], uid: str, bits_stored: int) -> bytes:
    """One grayscale frame as a JPEG codestream for transfer syntax ``uid``.

    The caller has already brought the frame to the precision the process needs:
    8 bits for baseline (.50), 12 for extended (.51), ``bits_stored`` (2-16) for
    lossless (.57, .70).
    """
    if uid == JPEGBaseline8Bit:
        data = imagecodecs.jpeg8_encode(frame.astype(np.uint8), level=_QUALITY)
    elif uid == JPEGExtended12Bit:
        data = imagecodecs.jpeg8_encode(frame.astype(np.uint16), level=_QUALITY, bitspersample=12)
    elif uid in _PREDICTOR:
        data = imagecodecs.jpeg8_encode(
            frame.astype(np.uint16),
            lossless=True,
            predictor=_PREDICTOR[uid],
            bitspersample=bits_stored,
        )
    else:
        raise FactoryError(f'Transfer syntax "{uid}" is not a JPEG (ISO 10918) process')
    return bytes(data)
