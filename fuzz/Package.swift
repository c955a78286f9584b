// swift-tools-version:6.0
// libFuzzer targets for ckpt, kept out of the main build. Build and run with scripts/fuzz.
import PackageDescription

let package = Package(
    name: "ckpt-fuzz",
    dependencies: [.package(name: "ckpt", path: "..")],
    targets: [
        .target(name: "FuzzSupport"),
        .executableTarget(name: "FuzzPickle", dependencies: ["FuzzSupport", .product(name: "CkptCore", package: "ckpt")]),
        .executableTarget(name: "FuzzCheckpoint", dependencies: ["FuzzSupport", .product(name: "CkptCore", package: "ckpt")]),
    ]
)
