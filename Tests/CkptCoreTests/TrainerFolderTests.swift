import Foundation
import Testing
@testable import CkptCore

/// Which files of a Trainer `checkpoint-N/` folder are training state, and where `strip` of one writes. The folder a
/// real Trainer writes is read in Tests/interop/test_trainer_folder.py.
@Suite struct TrainerFolderTests {
    @Test func trainingStateNames() {
        for name in ["optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth", "rng_state_3.pth", "trainer_state.json",
                     "training_args.bin", "optimizer.bin", "rank0-of-8-optimizer.pt", "global_step500/",
                     "pytorch_model_fsdp_0/", "optimizer_0/"] {
            #expect(TrainerFolder.isTrainingState(name), "\(name)")
        }
        for name in ["model.safetensors", "config.json", "tokenizer.json", "rng_state_x.pth", "rng_state_.pth",
                     "global_step500", "optimizer_a/", "global_step/", "README.md"] {
            #expect(!TrainerFolder.isTrainingState(name), "\(name)")
        }
    }

    @Test func stripTargets() throws {
        let tmp = try Oracle.tempDir().path
        let input = tmp + "/checkpoint-500"
        try FileManager.default.createDirectory(atPath: input, withIntermediateDirectories: false)
        try FileManager.default.createDirectory(atPath: tmp + "/models", withIntermediateDirectories: false)
        func target(_ out: String) throws -> String {
            let t = try Checkpoint.trainerStripTarget(out, input: input + "/")
            return "\(t.kind.rawValue) \(t.path)"
        }
        #expect(try target(tmp + "/w.pt") == "torch \(tmp)/w.pt")
        #expect(try target(tmp + "/w.pth") == "torch \(tmp)/w.pth")
        #expect(try target(tmp + "/w.safetensors") == "safetensors \(tmp)/w.safetensors")
        #expect(try target(tmp + "/published") == "folder \(tmp)/published")
        #expect(try target(tmp + "/published/") == "folder \(tmp)/published")
        #expect(try target(tmp + "/models") == "folder \(tmp)/models/checkpoint-500")
        for refused in [input + "/w.pt", input, tmp, tmp + "/w.json", tmp + "/w.onnx", tmp + "/missing/w.pt", "-"] {
            #expect(throws: (any Error).self, "\(refused)") { _ = try target(refused) }
        }
    }
}
