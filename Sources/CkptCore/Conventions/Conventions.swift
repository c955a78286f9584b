/// One training framework's checkpoint conventions, as data: how to recognise its files, where the weights and the
/// EMA are, which records are training state and what its own strip or publish script resets. Each entry cites the
/// upstream source it was checked against (see docs/frameworks.md for the facts behind each). Adding a framework
/// is adding one entry to ``all`` (and its fixture).
public struct FrameworkConvention: Sendable {
    /// `--framework` name: `yolov5`, `lightning`, `mmengine`.
    public let id: String
    /// Human name for `info`.
    public let name: String
    /// The upstream files this entry follows (`repository: path (function)`).
    public let sources: [String]
    /// What identifies the framework. Every `required` clue must hold; the entry with the most clues holding wins.
    let clues: [Clue]
    /// The records that hold the weights, in the order `keys` and `strip` look for them (first not None wins).
    let weightsRecords: [String]
    /// Where the EMA of the weights lives, if the framework keeps one.
    let ema: EMAConvention?
    /// Top-level records that are training state: optimizers, schedulers, scalers, loops, callbacks, counters.
    let trainingState: [String]
    /// How `strip` clears training state: set the record to None (YOLOv5's `strip_optimizer`, so loaders that
    /// index the key still find it) or remove it.
    let clearing: Clearing
    /// When set, the framework's publish script keeps only these records (and the weights): every other record goes.
    let keepOnly: [String]?
    /// Integer records the framework's own strip script resets (`epoch` to -1), when present.
    let resets: [Reset]
    /// Records the framework's loader reads, kept by `strip` (and never reported as looking like training state).
    let loaderReads: [String]
    /// Extra rewrites of the framework's own strip or publish script.
    let publish: [PublishStep]

    enum Clue: Sendable {
        /// A top-level record of this name.
        case record(String, required: Bool = false)
        /// An object whose class name starts with this, anywhere in the pickle.
        case classPrefix(String, required: Bool = false)
        /// A state-dict key of the weights record starting with this.
        case keyPrefix(String, required: Bool = false)
        /// A key inside a dict record (`meta.mmengine_version`).
        case nestedKey(record: String, key: String, required: Bool = false)
        /// A file beside the weights in a folder (`trainer_state.json`).
        case folderFile(String, required: Bool = false)

        var required: Bool {
            switch self {
            case .record(_, let r), .classPrefix(_, let r), .keyPrefix(_, let r), .nestedKey(_, _, let r),
                 .folderFile(_, let r): r
            }
        }
    }

    enum Clearing: Sendable { case setNone, remove }

    struct Reset: Sendable {
        var record: String
        var value: Int64
    }

    enum PublishStep: Sendable {
        /// Ultralytics' `strip_optimizer`: the model's `args` (an `IterableSimpleNamespace`) becomes a dict, its
        /// `criterion` None, `train_args` keeps only the keys of the default config.
        case ultralyticsModel(defaultConfigKeys: [String])
        /// Key prefixes the publish script removes from every weight name (timm's `clean_state_dict`).
        case stripKeyPrefixes([String])
        /// The publish script writes the weights record alone, as the whole file (timm's `clean_checkpoint.py`).
        case bareWeights
    }

    /// Every entry, most specific first (detection takes the first of the best matches).
    public static let all: [FrameworkConvention] = [
        yolov5, ultralytics, ldm, lightning, timm, mmengine, torchvision, detectron2, fairseq, hfTrainer, generic,
    ]

    public static func named(_ name: String) -> FrameworkConvention? {
        all.first { $0.id == name.lowercased() }
    }
}

extension FrameworkConvention {
    /// Today's behaviour for files of no known framework: the common record names of training state set to None,
    /// `epoch` to -1, the first EMA-named record as the EMA.
    static let generic = FrameworkConvention(
        id: "generic", name: "no known framework (generic conventions)",
        sources: ["ckpt's own defaults: the record names YOLOv5, Ultralytics and most training scripts use"],
        clues: [],
        weightsRecords: ["model", "ema", "state_dict", "model_state_dict", "module", "net", "params"],
        ema: .record(["ema", "state_dict_ema", "model_ema", "ema_state_dict"], stripPrefix: nil, dropKeys: []),
        trainingState: ["optimizer", "ema", "updates", "scaler", "optimizer_state_dict", "scheduler", "lr_scheduler",
                        "amp", "message_hub", "scheduler_state_dict", "lr_scheduler_state_dict", "scaler_state_dict"],
        clearing: .setNone, keepOnly: nil, resets: [Reset(record: "epoch", value: -1)], loaderReads: [], publish: [])

    static let yolov5 = FrameworkConvention(
        id: "yolov5", name: "YOLOv5",
        sources: ["ultralytics/yolov5: train.py (the ckpt dict of each epoch)",
                  "ultralytics/yolov5: utils/general.py (strip_optimizer)"],
        clues: [.classPrefix("models.yolo.", required: true), .classPrefix("models.common."), .record("updates"),
                .record("opt"), .record("git")],
        weightsRecords: ["model", "ema"],
        ema: .record(["ema"], stripPrefix: nil, dropKeys: []),
        trainingState: generic.trainingState,
        clearing: .setNone, keepOnly: nil, resets: [Reset(record: "epoch", value: -1)],
        loaderReads: ["model"], publish: [])

    static let ultralytics = FrameworkConvention(
        id: "ultralytics", name: "Ultralytics",
        sources: ["ultralytics/ultralytics: ultralytics/engine/trainer.py (save_model)",
                  "ultralytics/ultralytics: ultralytics/utils/torch_utils.py (strip_optimizer)",
                  "ultralytics/ultralytics: ultralytics/cfg/default.yaml (DEFAULT_CFG_KEYS, 8.4.190)"],
        clues: [.classPrefix("ultralytics.", required: true), .record("train_args"), .record("train_metrics"),
                .record("updates")],
        weightsRecords: ["model", "ema"],
        ema: .record(["ema"], stripPrefix: nil, dropKeys: []),
        trainingState: ["optimizer", "best_fitness", "stopper", "ema", "updates", "scaler"],
        clearing: .setNone, keepOnly: nil, resets: [Reset(record: "epoch", value: -1)],
        loaderReads: ["model", "train_args"],
        publish: [.ultralyticsModel(defaultConfigKeys: ultralyticsDefaultConfigKeys)])

    /// Stable Diffusion (CompVis latent diffusion): a Lightning checkpoint whose `state_dict` holds the EMA as LitEma
    /// buffers, `model_ema.<name without dots>`, beside `model_ema.decay` and `model_ema.num_updates`.
    static let ldm = FrameworkConvention(
        id: "ldm", name: "Stable Diffusion / latent diffusion (Lightning)",
        sources: ["CompVis/stable-diffusion: ldm/modules/ema.py (LitEma: buffer names with '.' removed)",
                  "CompVis/stable-diffusion: ldm/models/diffusion/ddpm.py (use_ema, model_ema = LitEma(self.model))"],
        clues: [.keyPrefix("model_ema.", required: true), .keyPrefix("model.diffusion_model.", required: true),
                .record("pytorch-lightning_version")],
        weightsRecords: ["state_dict"],
        ema: .dotless(emaPrefix: "model_ema.", modelPrefix: "model.", extras: ["decay", "num_updates"]),
        trainingState: lightning.trainingState,
        clearing: .remove, keepOnly: nil, resets: [],
        loaderReads: lightning.loaderReads, publish: [])

    static let lightning = FrameworkConvention(
        id: "lightning", name: "PyTorch Lightning",
        sources: ["Lightning-AI/pytorch-lightning: src/lightning/pytorch/trainer/connectors/checkpoint_connector.py (dump_checkpoint)",
                  "Lightning-AI/pytorch-lightning: src/lightning/pytorch/core/saving.py (_load_from_checkpoint)",
                  "Lightning-AI/pytorch-lightning: src/lightning/pytorch/callbacks/weight_averaging.py (current_model_state)"],
        clues: [.record("pytorch-lightning_version", required: true), .record("optimizer_states"), .record("loops"),
                .record("lr_schedulers"), .record("callbacks"), .record("state_dict"), .record("global_step"),
                .record("hyper_parameters"), .record("hparams_name")],
        weightsRecords: ["state_dict"],
        ema: .inWeights(marker: "current_model_state",
                        note: "state_dict already holds the averaged weights (Lightning's WeightAveraging callback "
                            + "saves them there and the live ones in current_model_state)"),
        trainingState: ["optimizer_states", "lr_schedulers", "loops", "callbacks", "current_model_state", "averaging_state",
                        "MixedPrecision", "MixedPrecisionPlugin", "native_amp_scaling_state", "amp_scaling_state",
                        "DoublePrecision", "HalfPrecision", "FSDPPrecision", "DeepSpeedPrecision"],
        clearing: .remove, keepOnly: nil, resets: [],
        loaderReads: ["state_dict", "hyper_parameters", "hparams_name", "hparams_type", "datamodule_hyper_parameters",
                      "datamodule_hparams_name", "datamodule_hparams_type", "pytorch-lightning_version", "epoch",
                      "global_step"],
        publish: [])

    static let timm = FrameworkConvention(
        id: "timm", name: "timm (CheckpointSaver)",
        sources: ["huggingface/pytorch-image-models: timm/utils/checkpoint_saver.py (_save)",
                  "huggingface/pytorch-image-models: clean_checkpoint.py (_clean_checkpoint)",
                  "huggingface/pytorch-image-models: timm/models/_helpers.py (load_state_dict, clean_state_dict)"],
        clues: [.record("state_dict", required: true), .record("arch", required: true), .record("version", required: true),
                .record("state_dict_ema"), .record("amp_scaler"), .record("metric")],
        weightsRecords: ["state_dict"],
        ema: .record(["state_dict_ema", "model_ema"], stripPrefix: nil, dropKeys: []),
        trainingState: ["optimizer", "amp_scaler", "state_dict_ema", "model_ema"],
        clearing: .remove, keepOnly: nil, resets: [],
        loaderReads: ["state_dict"],
        publish: [.stripKeyPrefixes(["module.", "_orig_mod."]), .bareWeights])

    static let mmengine = FrameworkConvention(
        id: "mmengine", name: "OpenMMLab mmengine Runner / mmcv 1.x",
        sources: ["open-mmlab/mmengine: mmengine/runner/runner.py (save_checkpoint)",
                  "open-mmlab/mmengine: mmengine/hooks/ema_hook.py (before_save_checkpoint swaps the EMA into state_dict)",
                  "open-mmlab/mmdetection: tools/model_converters/publish_model.py (keeps meta and state_dict)",
                  "open-mmlab/mmcv 1.x: mmcv/runner/checkpoint.py (save_checkpoint: meta.mmcv_version, optimizer)"],
        clues: [.record("meta", required: true), .record("message_hub"), .record("param_schedulers"),
                .nestedKey(record: "meta", key: "mmengine_version"), .nestedKey(record: "meta", key: "mmcv_version"),
                .record("ema_state_dict")],
        weightsRecords: ["state_dict"],
        ema: .inWeights(marker: "ema_state_dict",
                        note: "state_dict already holds the EMA (mmengine's EMAHook swaps it in before saving; "
                            + "ema_state_dict holds the live weights)"),
        trainingState: ["optimizer", "param_schedulers", "message_hub", "ema_state_dict"],
        clearing: .remove, keepOnly: ["meta", "state_dict"], resets: [],
        loaderReads: ["meta", "state_dict"], publish: [])

    static let torchvision = FrameworkConvention(
        id: "torchvision", name: "torchvision reference scripts",
        sources: ["pytorch/vision: references/classification/train.py (checkpoint dict, model_ema)",
                  "pytorch/vision: references/classification/utils.py (ExponentialMovingAverage: AveragedModel)"],
        clues: [.record("model", required: true), .record("lr_scheduler", required: true), .record("args", required: true),
                .record("model_ema"), .record("epoch"), .record("optimizer")],
        weightsRecords: ["model"],
        ema: .record(["model_ema"], stripPrefix: "module.", dropKeys: ["n_averaged"]),
        trainingState: ["optimizer", "lr_scheduler", "scaler", "model_ema"],
        clearing: .remove, keepOnly: nil, resets: [],
        loaderReads: ["model"], publish: [])

    static let detectron2 = FrameworkConvention(
        id: "detectron2", name: "detectron2 (Checkpointer)",
        sources: ["facebookresearch/fvcore: fvcore/common/checkpoint.py (Checkpointer.save)",
                  "facebookresearch/detectron2: detectron2/engine/hooks.py (PeriodicCheckpointer: iteration)",
                  "facebookresearch/detectron2: detectron2/engine/defaults.py (DefaultTrainer: the `trainer` record)"],
        clues: [.record("model", required: true), .record("iteration", required: true), .record("scheduler"),
                .record("optimizer")],
        weightsRecords: ["model"],
        ema: .record(["ema_state"], stripPrefix: nil, dropKeys: []),
        trainingState: ["optimizer", "scheduler", "grad_scaler", "ema_state", "trainer"],
        clearing: .remove, keepOnly: nil, resets: [],
        loaderReads: ["model", "__author__", "matching_heuristics"], publish: [])

    static let fairseq = FrameworkConvention(
        id: "fairseq", name: "fairseq",
        sources: ["facebookresearch/fairseq: fairseq/trainer.py (state_dict: last_optimizer_state, extra_state.ema)",
                  "facebookresearch/fairseq: fairseq/checkpoint_utils.py (load_checkpoint_to_cpu, _upgrade_state_dict)"],
        clues: [.record("model", required: true), .record("last_optimizer_state"), .record("optimizer_history", required: true),
                .record("extra_state"), .record("cfg")],
        weightsRecords: ["model"],
        ema: .record(["extra_state.ema"], stripPrefix: nil, dropKeys: []),
        trainingState: ["last_optimizer_state", "extra_state.ema", "extra_state.ema_fp32_params"],
        clearing: .remove, keepOnly: nil, resets: [],
        loaderReads: ["model", "cfg", "args", "optimizer_history", "extra_state", "task_state", "criterion"], publish: [])

    static let hfTrainer = FrameworkConvention(
        id: "hf-trainer", name: "Hugging Face Trainer checkpoint folder",
        sources: ["huggingface/transformers: src/transformers/trainer.py (_save_checkpoint)",
                  "huggingface/transformers: src/transformers/modeling_utils.py (save_pretrained)"],
        clues: [.folderFile("trainer_state.json", required: true), .folderFile("optimizer.pt"),
                .folderFile("scheduler.pt"), .folderFile("training_args.bin"), .folderFile("config.json")],
        weightsRecords: [],
        ema: nil,
        trainingState: [],
        clearing: .remove, keepOnly: nil, resets: [], loaderReads: [], publish: [])

    /// The keys of Ultralytics' default config (`ultralytics/cfg/default.yaml`, `DEFAULT_CFG_KEYS`), the union over
    /// releases 8.1.0, 8.2.0, 8.3.0, 8.3.100 and 8.4.190 as their PyPI wheels ship it: what its `strip_optimizer`
    /// keeps of `train_args` (a key some release knows is kept whatever release wrote the file).
    static let ultralyticsDefaultConfigKeys = """
        task mode model data epochs time patience batch imgsz save save_period cache device workers project name \
        exist_ok pretrained optimizer verbose seed deterministic single_cls rect cos_lr close_mosaic resume amp \
        fraction profile freeze multi_scale overlap_mask mask_ratio dropout val split save_json save_hybrid conf \
        iou max_det half dnn plots source vid_stride stream_buffer visualize augment agnostic_nms classes \
        retina_masks embed show save_frames save_txt save_conf save_crop show_labels show_conf show_boxes \
        line_width format keras optimize int8 dynamic simplify opset workspace nms lr0 lrf momentum weight_decay \
        warmup_epochs warmup_momentum warmup_bias_lr box cls dfl pose kobj label_smoothing nbs hsv_h hsv_s hsv_v \
        degrees translate scale shear perspective flipud fliplr mosaic mixup copy_paste auto_augment erasing \
        crop_fraction cfg tracker bgr copy_paste_mode cls_remap compile channels_last quantize distill_model dis \
        cls_pw rle angle dlog dgrad dlam cutmix
        """.split(separator: " ").map(String.init)
}

/// Where a framework keeps the EMA of the weights.
enum EMAConvention: Sendable {
    /// A record holding the EMA (a module or a state dict): the first of these names that is not None. Its keys may
    /// carry a wrapper's prefix (an `AveragedModel`'s `module.`) and bookkeeping entries (`n_averaged`), which
    /// `--use-ema` removes so that the EMA has the model's own names.
    case record([String], stripPrefix: String?, dropKeys: [String])
    /// LitEma (latent diffusion): inside the weights record, the EMA of `<modelPrefix><name>` is the buffer
    /// `<emaPrefix><name without modelPrefix, dots removed>`; `<emaPrefix><extra>` are its counters.
    case dotless(emaPrefix: String, modelPrefix: String, extras: [String])
    /// The weights record already holds the averaged weights when `marker` is present (the live ones are there).
    case inWeights(marker: String, note: String)
}
