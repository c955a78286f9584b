import ArgumentParser
import CkptCore
import Foundation

struct Convert: ParsableCommand, OptionTexts {
    static let configuration = CommandConfiguration(
        commandName: "convert",
        abstract: "Write a record's state dict in another format: .safetensors, or a weights-only torch file.",
        discussion: """
        The input may be a torch file (zip or legacy), .safetensors, a sharded checkpoint's index
        (pytorch_model.bin.index.json, model.safetensors.index.json) or an .onnx model. The output format
        follows OUT's extension: .safetensors, else a torch zip file that loads with weights_only=True
        (non-tensor values made plain data as strip --state-dict makes them, and the written pickle replayed
        through torch's weights_only rules before the rename: if it would be refused, nothing is written).
        To safetensors, views are compacted and tensors sharing a storage are stored once, as Hugging Face's
        convert.py does (the aliases are listed in __metadata__ with "format": "pt"). The file's other
        records that are plain data (epoch, date, hyper_parameters, model_config; not training state) are
        written to __metadata__ too, each as JSON under its name (listed in ckpt.records, the weights record
        named by ckpt.weights); converting such a file back to a torch file restores them beside the state dict.

        --max-shard-size SIZE writes OUT as a folder of safetensors shards (model-00001-of-0000N.safetensors \
        and model.safetensors.index.json; one shard: model.safetensors alone), split exactly as \
        huggingface_hub's save_torch_state_dict splits (see ckpt help consolidate). The folder holds the \
        weights only: the file's other records are not carried. OUT must not exist or be an empty folder; it \
        appears whole or not at all.

        Examples:
          ckpt convert best.pt best.safetensors
          ckpt convert last.pt ema.safetensors --record ema
          ckpt convert model.safetensors model.pt
          ckpt convert pytorch_model.bin.index.json model.safetensors
          ckpt convert best.pt model/ --max-shard-size 500MB
        """)

    @Argument(help: "The checkpoint to read (never modified).") var input: String
    @Argument(help: "Where to write; the extension picks the format.") var output: String
    @OptionGroup var recordOption: RecordOption<Self>
    @OptionGroup var frameworkOption: FrameworkOption<Self>
    @OptionGroup var rewriteOptions: RewriteOptions<Self>
    @OptionGroup var jsonOption: JSONOption<Self>
    @OptionGroup var shardOption: ShardOption
    @Flag(name: .customLong("drop-unconvertible"),
          help: "To a torch file, drop values that cannot become plain data (listed) instead of failing.")
    var dropUnconvertible = false

    static let record = "Record to convert (default: model, else ema, else state_dict, else the file itself)."
    static let json = "Print the summary as JSON."

    func run() throws {
        let ckpt = try Phase.reading(input).run { try frameworkOption.apply(to: rewriteOptions.open(input)) }
        var w = WeightsOutput(input: input, output: output, record: recordOption.record)
        w.maxShardSize = try shardOption.bytes(output: output)
        w.dropUnconvertible = dropUnconvertible
        w.dryRun = rewriteOptions.dryRun
        w.json = jsonOption.json
        try w.run(ckpt, progress: nil)
    }
}
