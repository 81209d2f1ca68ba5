"""Training: Spark-to-tf.data feed, Keras models under tf.distribute, evaluation."""
