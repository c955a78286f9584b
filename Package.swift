// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "ckpt",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "ckpt", targets: ["ckpt"]),
        .library(name: "CkptCore", targets: ["CkptCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        // libzip: only for deflated records (torch.save never writes them; other tools' zips hold them), which it
        // inflates and CRC-checks. Stored records are read by ckpt's own zip reader.
        .systemLibrary(
            name: "CLibzip",
            pkgConfig: "libzip",
            providers: [.apt(["libzip-dev"])]
        ),
        // zlib's CRC-32, the x86-64 carry-less multiply CRC-32 and Linux syscall wrappers (header-only shims).
        .systemLibrary(name: "CSys"),
        .systemLibrary(
            name: "CProtobufC",
            pkgConfig: "libprotobuf-c",
            providers: [.apt(["libprotobuf-c-dev"])]
        ),
        // Generated from onnx.proto by protoc-c and committed (see Sources/COnnx/README.md).
        .target(
            name: "COnnx",
            dependencies: ["CProtobufC"],
            exclude: ["onnx.proto", "README.md"]
        ),
        .target(
            name: "CkptCore",
            dependencies: ["CLibzip", "CSys", "COnnx", "CProtobufC"]
        ),
        .executableTarget(
            name: "ckpt",
            dependencies: [
                "CkptCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(
            name: "CkptCoreTests",
            dependencies: ["CkptCore"]
        ),
    ]
)
