"""Writes a plain state dict as a zip-format PyTorch file (what `torch.save(state_dict, path)` writes), without torch:
the pickle is assembled opcode by opcode, naming the same globals torch's writer names."""

import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np

_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float16): "HalfStorage",
            np.dtype(ml_dtypes.bfloat16): "BFloat16Storage"}


def _str(s: str) -> bytes:
  b = s.encode()
  return pickle.BINUNICODE + struct.pack("<I", len(b)) + b


def _int(i: int) -> bytes:
  return pickle.BININT + struct.pack("<i", i)


def _ints(xs) -> bytes:
  return pickle.MARK + b"".join(_int(x) for x in xs) + pickle.TUPLE


def _global(module: str, name: str) -> bytes:
  return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def save_state_dict(path: str, state: dict[str, np.ndarray]) -> None:
  records = {}
  body = _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.MARK
  for i, (key, arr) in enumerate(state.items()):
    arr = np.ascontiguousarray(arr)
    records[f"archive/data/{i}"] = arr.tobytes()
    strides = [s // arr.itemsize for s in arr.strides] if arr.ndim else []
    storage = (pickle.MARK + _str("storage") + _global("torch", _STORAGE[arr.dtype]) + _str(str(i)) + _str("cpu")
               + _int(arr.size) + pickle.TUPLE + pickle.BINPERSID)
    hooks = _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    tensor = (_global("torch._utils", "_rebuild_tensor_v2") + pickle.MARK + storage + _int(0) + _ints(arr.shape)
              + _ints(strides) + pickle.NEWFALSE + hooks + pickle.TUPLE + pickle.REDUCE)
    body += _str(key) + tensor
  data = pickle.PROTO + b"\x02" + body + pickle.SETITEMS + pickle.STOP
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr("archive/data.pkl", data)
    zf.writestr("archive/byteorder", "little")
    zf.writestr("archive/version", "3\n")
    for name, raw in records.items():
      zf.writestr(name, raw)
