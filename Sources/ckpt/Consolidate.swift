import ArgumentParser
import CkptCore
import Foundation

struct Consolidate: ParsableCommand, OptionTexts {
    static let configuration = CommandConfiguration(
        commandName: "consolidate",
        abstract: "Write the model weights alone (no optimizer state) as one .pt, one .safetensors, or a sharded folder.",
        discussion: """
        IN is any checkpoint ckpt reads (a torch file, .safetensors, a sharded index or Hugging Face folder, a \
        Trainer folder, and the distributed checkpoint folders ckpt reads). The record written is the one keys \
        lists (--record R names another; a record that is optimizer state is refused, and when the record is the \
        whole file its optimizer records are left out), as its state dict: tensors only, no other values, no \
        records beside it. Tensors stream from IN to OUT in bounded chunks.

        OUT's form:
          OUT.safetensors  one safetensors file, as safetensors' save_file lays it out
                           (shared tensors stored once, aliases in __metadata__)
          OUT.pt           (any other extension) a torch file holding the state dict;
                           loads with torch.load(weights_only=True)
          --max-shard-size SIZE
                           OUT is a folder: model-00001-of-0000N.safetensors and
                           model.safetensors.index.json, as huggingface_hub's
                           save_torch_state_dict(sd, OUT, max_shard_size=SIZE) writes
                           them (one shard: model.safetensors alone, no index); OUT
                           must not exist, or be an empty folder

        The split is huggingface_hub's: shared tensors are stored once, then tensors in state dict order fill \
        a shard until the next would pass SIZE; a tensor larger than SIZE gets a shard of its own. SIZE is \
        bytes, or a number with TB, GB, MB or KB (powers of 1000: 5GB is 5,000,000,000 bytes; no GiB). The \
        index holds {"metadata": {"total_size": ...}, "weight_map": {...}} (aliases of shared tensors in \
        metadata), as json.dump(indent=2) writes it. transformers' save_pretrained splits the same way and adds \
        total_parameters; from_pretrained reads both.

        --half writes float32, float64 and bfloat16 tensors as float16 (torch's .half(), bit for bit; \
        integer and float8 tensors untouched). Every output is written into a temporary file or folder beside OUT \
        and renamed into place: it appears whole or not at all, and a failure writes nothing.

        Examples:
          ckpt consolidate last.pt model.safetensors
          ckpt consolidate last.pt model.pt --half
          ckpt consolidate checkpoint-dir/ model/ --max-shard-size 5GB
        """)

    @Argument(help: "The checkpoint to read (never modified).") var input: String
    @Argument(help: "Where to write: OUT.pt, OUT.safetensors, or with --max-shard-size a folder.") var output: String
    @OptionGroup var recordOption: RecordOption<Self>
    @Flag(help: "Write floating tensors as float16 (torch's .half(); integer tensors untouched).") var half = false
    @OptionGroup var shardOption: ShardOption
    @OptionGroup var frameworkOption: FrameworkOption<Self>
    @OptionGroup var rewriteOptions: RewriteOptions<Self>
    @OptionGroup var jsonOption: JSONOption<Self>
    @OptionGroup var progress: ProgressOptions

    static let record = "The record to write (default: the one keys lists: model, else ema, else state_dict, ...)."
    static let json = "Print the summary as JSON."

    func run() throws {
        let ckpt = try Phase.reading(input).run { try frameworkOption.apply(to: keptUntilExit(rewriteOptions.open(input))) }
        var w = WeightsOutput(input: input, output: output, record: recordOption.record)
        w.half = half
        w.maxShardSize = try shardOption.bytes(output: output)
        w.weightsOnly = true
        w.verb = "consolidated"
        w.dryRun = rewriteOptions.dryRun
        w.json = jsonOption.json
        try w.run(ckpt, progress: progress)
    }
}
