"""A dataset-mapper wrapper whose image read errors name the file.

PIL reports a truncated or corrupt file as e.g. ``OSError: image file is truncated``,
without its path; in a data-loader worker the traceback does not name it either. When the
wrapped mapper fails, :class:`FileNamingMapper` reads the record's image once more: if that
read fails too, the error is a :class:`~mgd_det.errors.DataError` naming the file, the data
set and the fix; otherwise the original exception propagates unchanged (not an image
problem). The happy path costs nothing.
"""
from typing import Callable, Dict, Optional

from mgd_det.errors import DataError

from .image_files import _short_reason


class FileNamingMapper:
    """Wraps ``mapper(dataset_dict)``; see the module doc."""

    def __init__(self, mapper: Callable[[Dict], Dict], dataset_names=(), image_format: Optional[str] = None):
        self.mapper = mapper
        self.dataset_names = tuple(dataset_names)
        self.image_format = image_format

    def __call__(self, dataset_dict: Dict):
        try:
            return self.mapper(dataset_dict)
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001 -- re-raised unless the image itself is at fault
            file_name = dataset_dict.get("file_name") if isinstance(dataset_dict, dict) else None
            reason = _read_error(file_name, self.image_format) if file_name else None
            if reason is None:
                raise
            sets = f" (data set {', '.join(self.dataset_names)})" if self.dataset_names else ""
            raise DataError(
                f"cannot read image {file_name}{sets}: {reason}; replace the file or remove its "
                "entry from the annotation file", path=file_name,
            ) from err


def _read_error(file_name: str, image_format: Optional[str]) -> Optional[str]:
    """Why ``file_name`` cannot be decoded, or None if it can."""
    from detectron2.data.detection_utils import read_image

    try:
        read_image(file_name, format=image_format)
    except Exception as err:  # noqa: BLE001 -- any decoder failure is the reason
        return _short_reason(err)
    return None
