# Train a small Keras model from R with adafactor_jax.keras.Adafactor, the way keras3 does
# (reticulate, the optimizer object passed to compile() unchanged, numbers as R writes them:
# every number a double), and check the weights against the same training run in Python.
#
#   RETICULATE_PYTHON=.venv/bin/python Rscript r/train_adafactor.R
#
# Exits with status 1 when the weights differ.

library(reticulate)
Sys.setenv(KERAS_BACKEND = "jax")
np <- import("numpy", convert = FALSE)
keras <- import("keras")
afx <- import("adafactor_jax")
invisible(import("adafactor_jax.keras"))  # makes afx$keras available
check <- import_from_path("r_check", path = file.path(getwd(), "r"))

keras$utils$set_random_seed(0L)
model <- keras$Sequential(list(
  keras$Input(shape = list(8L)),
  keras$layers$Dense(16L, activation = "tanh"),
  keras$layers$Dense(4L)
))
model$compile(
  optimizer = afx$keras$Adafactor(learning_rate = 1e-3, gradient_accumulation_steps = 2),
  loss = "mse"
)
data <- check$data()
history <- model$fit(data[[1]], data[[2]], batch_size = 8L, epochs = 3L, shuffle = FALSE,
                     verbose = 0L)
losses <- unlist(history$history$loss)
cat("R: optimizer", class(model$optimizer)[1], "\n")
cat("R: losses", format(losses, digits = 8), "\n")

result <- check$compare(model$get_weights(), model$optimizer$variables)
cat("R:", result$message, "\n")
if (!result$equal) quit(status = 1)
