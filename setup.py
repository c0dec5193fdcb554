from setuptools import find_packages, setup

# The trainer contract implemented here is AllenNLP 2.10.1's (with 2.4's API kept working).
# allennlp itself is installed by scripts/setup_env.sh: its own pins (torch<1.13) have no
# Python 3.11 wheels, so it cannot be a plain install_requires entry.
setup(
    name="trainer_ckpt",
    version="0.1.0",
    description="A crash-safe, registrable checkpointer for AllenNLP training loops",
    packages=find_packages(include=["trainer_ckpt", "trainer_ckpt.*"]),
    python_requires=">=3.11,<3.12",
    install_requires=["torch==2.13.0", "jsonnet"],
    extras_require={"allennlp": ["allennlp==2.10.1"], "safetensors": ["safetensors"], "s3": ["s3fs"],
                    "fast": ["isal"]},  # ISA-L's CRC32 for the checksums (zlib's otherwise)
)
