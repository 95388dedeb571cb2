package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"vdisk/internal/api"
	"vdisk/internal/stack"
)

func init() { register(newRmCmd) }

func newRmCmd(e *env) *cobra.Command {
	var s3o api.S3Options
	cmd := &cobra.Command{
		Use:   "rm s3://BUCKET/PREFIX",
		Short: "Delete an image from an object store",
		Long: "rm deletes an s3:// image: its manifest, every chunk object and its lease.\n" +
			"An image someone has open is refused with the writer's name; one whose\n" +
			"writer died is deleted with --force-takeover once its lease has expired.\n" +
			"Objects under the prefix that are not the image's are left alone.\n" +
			"(A local image is a file: remove it with rm(1).)",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !api.IsURL(args[0]) {
				return fmt.Errorf("rm: %s is not an s3:// image; a local image is a file, remove it with rm(1)", args[0])
			}
			if err := stack.DeleteS3(cmd.Context(), args[0], stackS3(s3o)); err != nil {
				return fmt.Errorf("rm: %w", err)
			}
			fmt.Fprintf(e.stdout, "deleted %s\n", args[0])
			return nil
		},
	}
	addS3Flags(cmd.Flags(), &s3o)
	return cmd
}
