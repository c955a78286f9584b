import ArgumentParser
import CkptCore

struct Layers: ParsableCommand, OptionTexts {
    static let configuration = CommandConfiguration(
        commandName: "layers",
        abstract: "Show a model's layers or module groups, and what a freeze would freeze.",
        discussion: """
        YOLO models (module objects): one row a layer as parse_model built it (index, from, repeats, parameters,
        module, yaml arguments; backbone or head as the model's yaml lists it). Other weights (torchvision, timm):
        one row per top-level key prefix (features, classifier), with the module class for module objects;
        --depth 2 goes one module level down (features.0, classifier.6). Modules without tensors (ReLU, avgpool)
        have no row. Parameters are what named_parameters() yields, in its order, a tied one once; in a plain
        state dict BatchNorm statistics (running_mean, running_var, num_batches_tracked) and anchors count as
        buffers, the rest as parameters.
        --freeze with integers only is YOLOv5 train.py's --freeze: N freezes names containing model.0. ...
        model.{N-1}. (several values, --freeze 0 1 2, freeze those layers). --freeze with key prefixes freezes
        every parameter named P or starting with P. (--freeze features); --trainable P... freezes all the others
        (--trainable classifier.6). A prefix that names no parameter is an error. --json lists the frozen and
        trainable parameter names in named_parameters() order, for a training script:
          for n, p in model.named_parameters(): p.requires_grad = n not in frozen

        Examples:
          ckpt layers yolov5s.pt --freeze 10
          ckpt layers vgg16.pt --depth 2
          ckpt layers vgg16.pt --trainable classifier.6 --json
        """)

    @Argument(help: "The checkpoint.") var file: String
    @OptionGroup var recordOption: RecordOption<Self>
    @Option(parsing: .upToNextOption,
            help: "Integers: YOLOv5's --freeze (N: layers 0..N-1, or a list of layer indices); else key prefixes to freeze.")
    var freeze: [String] = []
    @Option(parsing: .upToNextOption, help: "Key prefixes to leave trainable; every other parameter is frozen.")
    var trainable: [String] = []
    @Option(help: "Module levels below the common prefix to show (1: features; 2: features.0). Not for YOLO tables.")
    var depth = 1
    @OptionGroup var frameworkOption: FrameworkOption<Self>
    @OptionGroup var jsonOption: JSONOption<Self>

    func validate() throws {
        if !freeze.isEmpty && !trainable.isEmpty { throw ValidationError("--freeze and --trainable exclude each other.") }
        if depth < 1 { throw ValidationError("--depth must be 1 or more.") }
    }

    func run() throws {
        let table = try Phase.reading(file).run {
            let spec: FreezeSpec? = !trainable.isEmpty ? .trainable(trainable) : freeze.isEmpty ? nil : .freeze(freeze)
            let c = try frameworkOption.apply(to: Checkpoint(path: file))
            return try LayersBuilder(checkpoint: c, record: recordOption.record, freeze: spec, depth: depth).build()
        }
        emit(jsonOption.json ? table.json.rendered() : table.table)
    }
}
