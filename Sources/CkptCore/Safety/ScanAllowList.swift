/// The allow-list `ckpt scan` judges calls by, beyond torch's own weights_only allow-list
/// (``TorchPolicyData/weightsOnlyGlobals``): each entry is one callable (by the name pickle's Unpickler
/// looks up, Python 2 spellings already renamed) and one line saying why calling it cannot run code.
/// A call of anything else is dangerous. Data only: the rules that use it are in ``GlobalPolicy``.
public enum ScanAllowList {
    public struct Entry: Sendable {
        public var name: String
        public var why: String
    }

    /// Callables a pickle may call: what they build is a plain value made from the call's arguments.
    public static let calls: [Entry] = [
        // numpy's array and scalar reconstruction (ndarray.__reduce__, numpy scalars, dtypes)
        .init(name: "numpy.core.multiarray._reconstruct", why: "makes an empty ndarray of a given type and shape; BUILD then fills it from bytes"),
        .init(name: "numpy._core.multiarray._reconstruct", why: "makes an empty ndarray of a given type and shape; BUILD then fills it from bytes"),
        .init(name: "numpy.core.multiarray.scalar", why: "makes a numpy scalar from a dtype and its raw bytes"),
        .init(name: "numpy._core.multiarray.scalar", why: "makes a numpy scalar from a dtype and its raw bytes"),
        .init(name: "numpy.core.numeric._frombuffer", why: "makes an ndarray over a bytes buffer"),
        .init(name: "numpy._core.numeric._frombuffer", why: "makes an ndarray over a bytes buffer"),
        .init(name: "numpy.dtype", why: "makes a dtype from a type code string; BUILD sets its byte order and fields"),
        .init(name: "numpy.ndarray", why: "makes an empty ndarray; BUILD fills it from bytes"),
        // TorchScript's pickle builders (torch/jit/_pickle.py): each returns its argument
        .init(name: "torch.jit._pickle.build_intlist", why: "TorchScript list type tag: returns its argument"),
        .init(name: "torch.jit._pickle.build_tensorlist", why: "TorchScript list type tag: returns its argument"),
        .init(name: "torch.jit._pickle.build_doublelist", why: "TorchScript list type tag: returns its argument"),
        .init(name: "torch.jit._pickle.build_boollist", why: "TorchScript list type tag: returns its argument"),
        .init(name: "torch.jit._pickle.build_tensor_from_id", why: "TorchScript tensor placeholder: returns its argument or None"),
        .init(name: "torch.jit._pickle.restore_type_tag", why: "TorchScript container type tag: returns its first argument"),
        // plain values (builtins; Python 2's __builtin__ names are renamed to these first)
        .init(name: "builtins.bool", why: "builds a plain value from its argument"),
        .init(name: "builtins.int", why: "builds a plain value from its argument"),
        .init(name: "builtins.float", why: "builds a plain value from its argument"),
        .init(name: "builtins.complex", why: "builds a plain value from its arguments"),
        .init(name: "builtins.str", why: "builds a plain value from its argument"),
        .init(name: "builtins.bytes", why: "builds a plain value from its argument"),
        .init(name: "builtins.bytearray", why: "builds a plain value from its argument"),
        .init(name: "builtins.list", why: "builds a list of its argument's items"),
        .init(name: "builtins.tuple", why: "builds a tuple of its argument's items"),
        .init(name: "builtins.set", why: "builds a set of its argument's items"),
        .init(name: "builtins.frozenset", why: "builds a frozenset of its argument's items"),
        .init(name: "builtins.dict", why: "builds a dict of its argument's pairs"),
        .init(name: "builtins.slice", why: "builds a slice of three values"),
        .init(name: "builtins.range", why: "builds a range of three integers"),
        .init(name: "builtins.object", why: "builds an empty object"),
        .init(name: "copyreg._reconstructor", why: "base.__new__(cls) (+ base.__init__ for a base other than object): cls and base are judged as rows of their own"),
        // stdlib data types
        .init(name: "collections.OrderedDict", why: "builds a dict of its argument's pairs"),
        .init(name: "collections.Counter", why: "builds a dict of counts"),
        .init(name: "collections.deque", why: "builds a deque of its argument's items"),
        .init(name: "collections.defaultdict", why: "builds a dict; its factory, called later for a missing key, is judged as a call of its own"),
        .init(name: "pathlib.Path", why: "joins strings into a path; touches no file"),
        .init(name: "pathlib.PosixPath", why: "joins strings into a path; touches no file"),
        .init(name: "pathlib.WindowsPath", why: "joins strings into a path; touches no file"),
        .init(name: "pathlib.PurePath", why: "joins strings into a path; touches no file"),
        .init(name: "pathlib.PurePosixPath", why: "joins strings into a path; touches no file"),
        .init(name: "pathlib.PureWindowsPath", why: "joins strings into a path; touches no file"),
        // Python 3.13 defines (and pickles) the path classes in pathlib._local (cpython gh-133789).
        .init(name: "pathlib._local.Path", why: "joins strings into a path; touches no file"),
        .init(name: "pathlib._local.PosixPath", why: "joins strings into a path; touches no file"),
        .init(name: "pathlib._local.WindowsPath", why: "joins strings into a path; touches no file"),
        .init(name: "pathlib._local.PurePath", why: "joins strings into a path; touches no file"),
        .init(name: "pathlib._local.PurePosixPath", why: "joins strings into a path; touches no file"),
        .init(name: "pathlib._local.PureWindowsPath", why: "joins strings into a path; touches no file"),
        .init(name: "datetime.datetime", why: "builds a date and time from numbers or its packed bytes"),
        .init(name: "datetime.date", why: "builds a date from numbers or its packed bytes"),
        .init(name: "datetime.time", why: "builds a time from numbers or its packed bytes"),
        .init(name: "datetime.timedelta", why: "builds a duration from numbers"),
        .init(name: "datetime.timezone", why: "builds a fixed UTC offset from a timedelta and a name"),
        .init(name: "decimal.Decimal", why: "parses a number from a string or a tuple of digits"),
        .init(name: "fractions.Fraction", why: "parses a number from a string or two integers"),
        .init(name: "argparse.Namespace", why: "stores its keyword arguments as attributes"),
        .init(name: "types.SimpleNamespace", why: "stores its keyword arguments as attributes"),
        // torch values (beside the weights_only list, which has torch.device and torch.Size)
        .init(name: "torch.device", why: "parses a device name and index"),
        .init(name: "torch.Size", why: "builds a tuple of integers"),
        // torch.distributed.checkpoint's .metadata (torch/distributed/checkpoint/metadata.py): an Enum called with its
        // value returns the member
        .init(name: "torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING",
              why: "an Enum: called with a value, it returns the member of that value"),
        // framework data classes pickled by calling them
        .init(name: "ultralytics.utils.IterableSimpleNamespace",
              why: "Ultralytics' types.SimpleNamespace subclass: called with no arguments, BUILD sets its attributes"),
        // DeepSpeed's ZeRO optimizer files (deepspeedai/DeepSpeed: deepspeed/runtime/zero/config.py)
        .init(name: "deepspeed.runtime.zero.config.ZeroStageEnum",
              why: "DeepSpeed's `ZeroStageEnum(int, Enum)`: called with a value, it returns the member of that value"),
    ]

    /// Classes that may be built with NEWOBJ (or `copyreg._reconstructor`) and then BUILD, beside the calls above:
    /// their `__setstate__` (if any) only stores the state it is given.
    public static let constructions: [Entry] = [
        // DeepSpeed's ZeRO optimizer files (deepspeedai/DeepSpeed): plain classes without __setstate__ or __slots__
        .init(name: "deepspeed.runtime.fp16.loss_scaler.LossScaler",
              why: "DeepSpeed's static loss scaler (deepspeed/runtime/fp16/loss_scaler.py): no __setstate__, BUILD fills its __dict__"),
        .init(name: "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
              why: "DeepSpeed's dynamic loss scaler (deepspeed/runtime/fp16/loss_scaler.py): no __setstate__, BUILD fills its __dict__"),
        .init(name: "deepspeed.utils.tensor_fragment.fragment_address",
              why: "DeepSpeed's `@dataclass fragment_address(numel, start)` (deepspeed/utils/tensor_fragment.py): BUILD fills its __dict__"),
        .init(name: "argparse.Namespace", why: "no __setstate__: BUILD fills its __dict__"),
        .init(name: "types.SimpleNamespace", why: "no __setstate__: BUILD fills its __dict__"),
        .init(name: "collections.OrderedDict", why: "BUILD fills its __dict__"),
        .init(name: "collections.Counter", why: "BUILD fills its __dict__"),
        .init(name: "collections.defaultdict", why: "BUILD fills its __dict__"),
        .init(name: "builtins.object", why: "an empty object"),
        // torch.distributed.checkpoint's .metadata: dataclasses (torch/distributed/checkpoint/metadata.py, filesystem.py)
        .init(name: "torch.distributed.checkpoint.metadata.Metadata", why: "a dataclass without __setstate__: BUILD fills its __dict__"),
        .init(name: "torch.distributed.checkpoint.metadata.TensorStorageMetadata", why: "a dataclass without __setstate__: BUILD fills its __dict__"),
        .init(name: "torch.distributed.checkpoint.metadata.ChunkStorageMetadata", why: "a dataclass without __setstate__: BUILD fills its __dict__"),
        .init(name: "torch.distributed.checkpoint.metadata.BytesStorageMetadata", why: "a dataclass without fields"),
        .init(name: "torch.distributed.checkpoint.metadata.MetadataIndex", why: "a frozen dataclass without __setstate__: BUILD fills its __dict__"),
        .init(name: "torch.distributed.checkpoint.metadata.StorageMeta", why: "a dataclass without __setstate__: BUILD fills its __dict__"),
        .init(name: "torch.distributed.checkpoint.metadata.TensorProperties",
              why: "TensorProperties.__setstate__ unpacks a 5-tuple into its fields and maps the memory-format Enum to a torch.memory_format"),
        .init(name: "torch.distributed.checkpoint.filesystem._StorageInfo", why: "a dataclass without __setstate__: BUILD fills its __dict__"),
    ]

    /// Module prefixes whose classes may be built with NEWOBJ and BUILD: torch's modules and optimizers restore
    /// their state with `Module.__setstate__` / `Optimizer.__setstate__`, which store the state dict they are given.
    public static let constructionPrefixes: [Entry] = [
        .init(name: "torch.nn.modules.", why: "torch.nn.Module.__setstate__ stores its state dict"),
        .init(name: "torch.nn.parameter.", why: "Parameter.__setstate__ rebuilds a tensor from its state"),
        .init(name: "torch.optim.", why: "Optimizer.__setstate__ stores its state dict"),
    ]

    /// Well-known frameworks by module prefix, to label the classes a training checkpoint normally holds.
    public static let frameworks: [(prefix: String, label: String)] = [
        ("models.", "YOLOv5"), ("utils.", "YOLOv5"), ("ultralytics.", "Ultralytics"),
        ("torch.nn.", "torch.nn"), ("torch.optim.", "torch.optim"),
        ("omegaconf.", "omegaconf"), ("argparse.", "argparse"), ("timm.", "timm"),
        ("lightning.", "Lightning"), ("pytorch_lightning.", "Lightning"), ("lightning_fabric.", "Lightning"),
        ("mmengine.", "mmengine"), ("mmcv.", "mmengine"), ("mmdet.", "mmengine"), ("mmseg.", "mmengine"),
        ("numpy.", "numpy"), ("__torch__.", "TorchScript"),
    ]

    /// Top-level packages torch installs beside itself (its pip dependencies), with numpy: code every machine that
    /// loads the file has. A BUILD on their classes (as on the standard library's) is judged as a call of
    /// `__setstate__`; only third-party code (a model's own modules, a framework) counts as needs-code.
    public static let torchDependencies: Set<String> = [
        "torch", "torchgen", "functorch", "numpy", "sympy", "mpmath", "jinja2", "markupsafe", "networkx", "filelock",
        "fsspec", "typing_extensions", "setuptools", "pkg_resources", "_distutils_hack", "triton",
    ]

    static let callNames: [String: String] = Dictionary(calls.map { ($0.name, $0.why) }, uniquingKeysWith: { a, _ in a })
    static let constructionNames: [String: String] =
        Dictionary(constructions.map { ($0.name, $0.why) }, uniquingKeysWith: { a, _ in a })
}
