// The shared part of the example configs: a small LSTM text classifier with dropout on the tiny
// fixture in fixtures/data (320 training, 80 validation sentences; 20 batches per epoch).
// Paths are relative to the repository root: run `allennlp train` from there.
{
  dataset_reader: {
    type: "text_classification_json",
    tokenizer: { type: "whitespace" },
  },
  train_data_path: "fixtures/data/train.jsonl",
  validation_data_path: "fixtures/data/validation.jsonl",
  model: {
    type: "basic_classifier",
    text_field_embedder: { token_embedders: { tokens: { type: "embedding", embedding_dim: 16 } } },
    seq2vec_encoder: { type: "lstm", input_size: 16, hidden_size: 16 },
    dropout: 0.2,
  },
  data_loader: { batch_size: 16, shuffle: true },
  trainer: {
    num_epochs: 3,
    optimizer: { type: "adam", lr: 0.01 },
    validation_metric: "+accuracy",
    cuda_device: -1,
  },
}
